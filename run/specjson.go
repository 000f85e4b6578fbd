package run

import (
	"encoding/json"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The bundle's config.json is encoded through the types below rather
// than specs.Spec itself: encoding/json compiles an encoder for every
// type a value's type reaches, and specs.Spec reaches hundreds (resources,
// hooks, Windows, VMs, ...) whose compilation cost 1-3 ms per `layers
// run` process, for fields we never set. These mirror the containers
// makeSpec fills, with the spec's own JSON names, and reuse its small
// leaf types. TestSpecJSON decodes the result back into specs.Spec and
// compares, so that a field makeSpec sets and these lack is caught.

type specDoc struct {
	Version  string        `json:"ociVersion"`
	Process  *processDoc   `json:"process,omitempty"`
	Root     *specs.Root   `json:"root,omitempty"`
	Hostname string        `json:"hostname,omitempty"`
	Mounts   []specs.Mount `json:"mounts,omitempty"`
	Linux    *linuxDoc     `json:"linux,omitempty"`
}

type processDoc struct {
	Terminal        bool                     `json:"terminal,omitempty"`
	ConsoleSize     *specs.Box               `json:"consoleSize,omitempty"`
	User            specs.User               `json:"user"`
	Args            []string                 `json:"args,omitempty"`
	Env             []string                 `json:"env,omitempty"`
	Cwd             string                   `json:"cwd"`
	Capabilities    *specs.LinuxCapabilities `json:"capabilities,omitempty"`
	Rlimits         []specs.POSIXRlimit      `json:"rlimits,omitempty"`
	NoNewPrivileges bool                     `json:"noNewPrivileges,omitempty"`
}

type linuxDoc struct {
	Resources     *resourcesDoc          `json:"resources,omitempty"`
	CgroupsPath   string                 `json:"cgroupsPath,omitempty"`
	Namespaces    []specs.LinuxNamespace `json:"namespaces,omitempty"`
	Seccomp       *specs.LinuxSeccomp    `json:"seccomp,omitempty"`
	MaskedPaths   []string               `json:"maskedPaths,omitempty"`
	ReadonlyPaths []string               `json:"readonlyPaths,omitempty"`
}

type resourcesDoc struct {
	Devices []specs.LinuxDeviceCgroup `json:"devices,omitempty"`
}

// marshalSpec encodes s as config.json (see specDoc).
func marshalSpec(s *specs.Spec) ([]byte, error) {
	d := specDoc{Version: s.Version, Root: s.Root, Hostname: s.Hostname, Mounts: s.Mounts}
	if p := s.Process; p != nil {
		d.Process = &processDoc{Terminal: p.Terminal, ConsoleSize: p.ConsoleSize, User: p.User, Args: p.Args, Env: p.Env,
			Cwd: p.Cwd, Capabilities: p.Capabilities, Rlimits: p.Rlimits, NoNewPrivileges: p.NoNewPrivileges}
	}
	if l := s.Linux; l != nil {
		d.Linux = &linuxDoc{CgroupsPath: l.CgroupsPath, Namespaces: l.Namespaces, Seccomp: l.Seccomp,
			MaskedPaths: l.MaskedPaths, ReadonlyPaths: l.ReadonlyPaths}
		if l.Resources != nil {
			d.Linux.Resources = &resourcesDoc{Devices: l.Resources.Devices}
		}
	}
	return json.Marshal(&d)
}
