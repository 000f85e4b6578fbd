package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/layers-storage/layers/store"
)

// versionJSON is what `version --format json` prints.
type versionJSON struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	Go       string `json:"go"`
}

// buildVersion reads the version from the build information the Go
// toolchain stamps into the binary: the module version when installed
// with go install, else the VCS revision.
func buildVersion() versionJSON {
	v := versionJSON{Version: "devel", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (a *app) addMiscCommands(root *cobra.Command) {
	var vf listFlags
	version := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: a.verb(false, func(_ *cobra.Command, _ *store.Store, _ []string) error {
			asJSON, err := vf.json()
			if err != nil {
				return err
			}
			v := buildVersion()
			if asJSON {
				return writeJSON(a.stdout, v)
			}
			s := "layers " + v.Version
			if v.Revision != "" {
				s += " (" + shortID(v.Revision)
				if v.Modified {
					s += ", modified"
				}
				s += ")"
			}
			fmt.Fprintf(a.stdout, "%s %s %s/%s\n", s, v.Go, runtime.GOOS, runtime.GOARCH)
			return nil
		}),
	}
	vf.add(version)

	completion := &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Print a shell completion script",
		Long: `Print a shell completion script. For example:

  layers completion bash > /etc/bash_completion.d/layers
  layers completion zsh > "${fpath[1]}/_layers"
  layers completion fish > ~/.config/fish/completions/layers.fish`,
		Args:      cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		ValidArgs: []string{"bash", "zsh", "fish"},
		RunE: a.verb(false, func(cmd *cobra.Command, _ *store.Store, args []string) error {
			switch args[0] {
			case "bash":
				return cmd.Root().GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return cmd.Root().GenZshCompletion(a.stdout)
			default:
				return cmd.Root().GenFishCompletion(a.stdout, true)
			}
		}),
	}
	root.AddCommand(version, completion)
	a.addInspectCommand(root)
}
