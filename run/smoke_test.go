package run

import "testing"

func TestSmoke(t *testing.T) {
	for _, name := range runtimes {
		t.Run(name, func(t *testing.T) {
			needRuntime(t, name)
			st := newStore(t)
			addImage(t, st, "localhost/bb:1", defaultConfig())
			r := runIn(t, st, "localhost/bb:1", Options{Runtime: name, Remove: true, Command: []string{"sh", "-c", "echo hi; id; exit 3"}})
			t.Logf("%+v", r)
		})
	}
}
