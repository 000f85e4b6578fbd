package run

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Host files the runtime bind-mounts over the image's, as podman does:
// they are written into the bundle directory (under the runroot) for each
// run, so the image and the container's layer keep their own copies
// untouched (the runtime only creates an empty mount point where the
// image has none).
//
//   - /etc/hostname: the container's host name.
//   - /etc/hosts: localhost (IPv4 and IPv6) and the host name on
//     127.0.1.1 with --network none (the default); with --network host,
//     the host's /etc/hosts followed by the host name on 127.0.1.1 when
//     the host's file does not name it.
//   - /etc/resolv.conf: with --network host, the host's file as it is.
//     With --network none there is no network to reach a name server
//     through, so the host's search and options lines are kept and the
//     nameserver lines dropped: lookups fail at once instead of timing
//     out (podman drops the host's loopback name servers for a container
//     with a network namespace of its own for the same reason; with no
//     network at all, none is reachable).
//
// hostEtc holds the host's files.
const hostEtc = "/etc"

// etcFiles writes hostname, hosts and resolv.conf into dir and returns
// their bind mounts.
func etcFiles(dir, hostname, network string) ([]specs.Mount, error) {
	files := []struct {
		name string
		data []byte
	}{
		{"hostname", []byte(hostname + "\n")},
		{"hosts", hostsFile(hostname, network)},
		{"resolv.conf", resolvConf(network)},
	}
	var ms []specs.Mount
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return nil, fmt.Errorf("write the container's /etc/%s: %w", f.name, err)
		}
		ms = append(ms, specs.Mount{Destination: "/etc/" + f.name, Type: "bind", Source: p,
			Options: []string{"bind", "rprivate", "nosuid", "noexec", "nodev"}})
	}
	return ms, nil
}

// hostsFile is the container's /etc/hosts.
func hostsFile(hostname, network string) []byte {
	var b bytes.Buffer
	if network == NetworkHost {
		host, err := os.ReadFile(filepath.Join(hostEtc, "hosts"))
		if err == nil {
			b.Write(host)
			if len(host) > 0 && host[len(host)-1] != '\n' {
				b.WriteByte('\n')
			}
			if hostsNames(host)[hostname] {
				return b.Bytes()
			}
			fmt.Fprintf(&b, "127.0.1.1\t%s\n", hostname)
			return b.Bytes()
		}
	}
	b.WriteString("127.0.0.1\tlocalhost localhost.localdomain\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "127.0.1.1\t%s\n", hostname)
	return b.Bytes()
}

// hostsNames returns the names an /etc/hosts file gives addresses to.
func hostsNames(hosts []byte) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(hosts))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		for _, n := range f[min(1, len(f)):] {
			names[n] = true
		}
	}
	return names
}

// resolvConf is the container's /etc/resolv.conf.
func resolvConf(network string) []byte {
	host, err := os.ReadFile(filepath.Join(hostEtc, "resolv.conf"))
	if err != nil {
		return nil
	}
	if network == NetworkHost {
		return host
	}
	var b bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(host))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "nameserver" {
			continue
		}
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.Bytes()
}
