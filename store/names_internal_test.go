package store

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// TestValidNameMatchesGrammar checks the hand-written tag and container
// name checks against the grammar's regular expressions they replace
// (compiled here only), over edge cases and random strings.
func TestValidNameMatchesGrammar(t *testing.T) {
	tagRE := regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	nameRE := regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,252}$`)
	cases := []string{
		"", "a", "_", ".", "-", "_a", ".a", "-a", "a.", "a-", "a_", "A", "0", "a b", "a/b", "a:b",
		"é", "aé", "a\x00", "latest", "v1.2.3-rc_1",
		strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("a", 129),
		strings.Repeat("b", 252), strings.Repeat("b", 253), strings.Repeat("b", 254),
	}
	const alphabet = "aZ09_.-/: é\x00"
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		n := rng.IntN(12)
		if rng.IntN(20) == 0 {
			n = 120 + rng.IntN(140)
		}
		var b strings.Builder
		for range n {
			b.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		cases = append(cases, b.String())
	}
	for _, s := range cases {
		if got, want := validTag(s), tagRE.MatchString(s); got != want {
			t.Errorf("validTag(%q) = %v, the grammar says %v", s, got, want)
		}
		if got, want := validContainerName(s), nameRE.MatchString(s); got != want {
			t.Errorf("validContainerName(%q) = %v, the grammar says %v", s, got, want)
		}
	}
}
