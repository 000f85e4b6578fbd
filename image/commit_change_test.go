package image

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestApplyChanges checks each --change instruction, in its JSON and
// shell forms, against what docker commit --change gives.
func TestApplyChanges(t *testing.T) {
	base := func() v1.Config {
		return v1.Config{
			Env:        []string{"PATH=/usr/bin:/bin", "HOME=/root"},
			Cmd:        []string{"sh"},
			WorkingDir: "/srv",
			Labels:     map[string]string{"keep": "1"},
		}
	}
	tests := []struct {
		name    string
		changes []string
		check   func(c v1.Config) bool
	}{
		{"cmd json", []string{`CMD ["/bin/echo", "a b"]`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Cmd, []string{"/bin/echo", "a b"})
		}},
		{"cmd shell", []string{`CMD echo "$HOME" && true`}, func(c v1.Config) bool {
			// No expansion in CMD: the shell does it at run time.
			return reflect.DeepEqual(c.Cmd, []string{"/bin/sh", "-c", `echo "$HOME" && true`})
		}},
		{"lower-case instruction", []string{`cmd ["x"]`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Cmd, []string{"x"})
		}},
		{"entrypoint drops inherited cmd", []string{`ENTRYPOINT ["/bin/app"]`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Entrypoint, []string{"/bin/app"}) && c.Cmd == nil
		}},
		{"entrypoint keeps cmd set before", []string{`CMD ["--flag"]`, `ENTRYPOINT /bin/app -v`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Entrypoint, []string{"/bin/sh", "-c", "/bin/app -v"}) && reflect.DeepEqual(c.Cmd, []string{"--flag"})
		}},
		{"env pairs with quotes and expansion", []string{`ENV A=1 B="two words" PATH=$PATH:/opt/bin C='$HOME'`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Env, []string{"PATH=/usr/bin:/bin:/opt/bin", "HOME=/root", "A=1", "B=two words", "C=$HOME"})
		}},
		{"env legacy form", []string{`ENV GREETING hello  world`}, func(c v1.Config) bool {
			return c.Env[2] == "GREETING=hello world"
		}},
		{"env sees earlier env", []string{`ENV X=1`, `ENV Y=${X}2`}, func(c v1.Config) bool {
			return c.Env[3] == "Y=12"
		}},
		{"workdir absolute and relative", []string{`WORKDIR /app`, `WORKDIR sub/../data`}, func(c v1.Config) bool {
			return c.WorkingDir == "/app/data"
		}},
		{"workdir relative to inherited", []string{`WORKDIR www`}, func(c v1.Config) bool {
			return c.WorkingDir == "/srv/www"
		}},
		{"user", []string{`USER 1000:1000`}, func(c v1.Config) bool { return c.User == "1000:1000" }},
		{"label", []string{`LABEL a=b "c d"="e f"`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Labels, map[string]string{"keep": "1", "a": "b", "c d": "e f"})
		}},
		{"expose", []string{`EXPOSE 80 53/udp 8000-8002/TCP`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.ExposedPorts, map[string]struct{}{"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}})
		}},
		{"volume json", []string{`VOLUME ["/data", "/var/log"]`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Volumes, map[string]struct{}{"/data": {}, "/var/log": {}})
		}},
		{"volume shell", []string{`VOLUME /data /cache`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.Volumes, map[string]struct{}{"/data": {}, "/cache": {}})
		}},
		{"stopsignal", []string{`STOPSIGNAL SIGTERM`}, func(c v1.Config) bool { return c.StopSignal == "SIGTERM" }},
		{"onbuild", []string{`ONBUILD RUN make`}, func(c v1.Config) bool {
			return reflect.DeepEqual(c.OnBuild, []string{"RUN make"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			if err := applyChanges(&c, tt.changes); err != nil {
				t.Fatalf("applyChanges(%q): %v", tt.changes, err)
			}
			if !tt.check(c) {
				t.Errorf("applyChanges(%q) gave %+v", tt.changes, c)
			}
		})
	}
	t.Run("custom shell", func(t *testing.T) {
		c := base()
		c.Shell = []string{"/bin/bash", "-ec"}
		if err := applyChanges(&c, []string{"CMD make all"}); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c.Cmd, []string{"/bin/bash", "-ec", "make all"}) {
			t.Errorf("cmd %q", c.Cmd)
		}
	})

	bad := []string{
		"FROM busybox",      // not a commit change
		"RUN true",          // neither
		"CMD",               // no value
		"ENV",               // no value
		"ENV =x",            // empty key
		"ENV A=1 B",         // B is not K=V
		"LABEL a='unclosed", // quote
		`ENV A="unclosed`,   // quote
		"EXPOSE http",       // not a port
		"EXPOSE 80/icmp",    // protocol
		"EXPOSE 90-80",      // backwards range
		"EXPOSE 70000",      // out of range
		"USER a b",          // two values
		"WORKDIR",           // no value
		"",                  // nothing
	}
	for _, ch := range bad {
		c := base()
		err := applyChanges(&c, []string{ch})
		if !errors.Is(err, ErrBadChange) {
			t.Errorf("applyChanges(%q): want ErrBadChange, got %v", ch, err)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(ch)) {
			t.Errorf("error %q does not name the change %q", err, ch)
		}
	}
}
