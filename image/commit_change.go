package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrBadChange means a --change instruction that Commit cannot apply: an
// unknown instruction, or a value that does not parse.
var ErrBadChange = errors.New("bad change")

// applyChanges applies Dockerfile-style instructions to cfg, in order,
// as `docker commit --change` does: CMD, ENTRYPOINT, ENV, WORKDIR, USER,
// LABEL, EXPOSE, VOLUME, STOPSIGNAL and ONBUILD. CMD, ENTRYPOINT and
// VOLUME take the JSON form (["a", "b"]) or the shell form; variables
// ($VAR, ${VAR}) are expanded from the config's environment in every
// instruction but CMD and ENTRYPOINT, outside single quotes, as docker's
// builder does.
func applyChanges(cfg *v1.Config, changes []string) error {
	cmdSet := false
	for _, ch := range changes {
		if err := applyChange(cfg, ch, &cmdSet); err != nil {
			return fmt.Errorf("%w %q: %w", ErrBadChange, ch, err)
		}
	}
	return nil
}

func applyChange(cfg *v1.Config, ch string, cmdSet *bool) error {
	ch = strings.TrimSpace(ch)
	instr, rest := ch, ""
	if i := strings.IndexAny(ch, " \t"); i >= 0 {
		instr, rest = ch[:i], ch[i+1:]
	}
	rest = strings.TrimSpace(rest)
	instr = strings.ToUpper(instr)
	if instr == "" {
		return errors.New("empty instruction")
	}
	if rest == "" {
		return fmt.Errorf("%s needs a value", instr)
	}
	env := envMap(cfg.Env)
	switch instr {
	case "CMD":
		cfg.Cmd = commandForm(rest, cfg.Shell)
		*cmdSet = true
	case "ENTRYPOINT":
		cfg.Entrypoint = commandForm(rest, cfg.Shell)
		// As in a Dockerfile: an ENTRYPOINT drops the CMD it inherited
		// (one set earlier in the same commit stays).
		if !*cmdSet {
			cfg.Cmd = nil
		}
	case "ENV", "LABEL":
		kvs, err := keyValues(instr, rest, env)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			if instr == "ENV" {
				cfg.Env = setEnv(cfg.Env, kv[0], kv[1])
				env[kv[0]] = kv[1]
			} else {
				if cfg.Labels == nil {
					cfg.Labels = map[string]string{}
				}
				cfg.Labels[kv[0]] = kv[1]
			}
		}
	case "WORKDIR":
		w, err := oneWord(instr, rest, env)
		if err != nil {
			return err
		}
		if !path.IsAbs(w) {
			w = path.Join("/", cfg.WorkingDir, w)
		}
		cfg.WorkingDir = path.Clean(w)
	case "USER":
		u, err := oneWord(instr, rest, env)
		if err != nil {
			return err
		}
		cfg.User = u
	case "STOPSIGNAL":
		s, err := oneWord(instr, rest, env)
		if err != nil {
			return err
		}
		cfg.StopSignal = s
	case "EXPOSE":
		words, err := shellWords(rest, env)
		if err != nil {
			return err
		}
		for _, w := range words {
			ports, err := parsePorts(w)
			if err != nil {
				return err
			}
			if cfg.ExposedPorts == nil {
				cfg.ExposedPorts = map[string]struct{}{}
			}
			for _, p := range ports {
				cfg.ExposedPorts[p] = struct{}{}
			}
		}
	case "VOLUME":
		var vols []string
		if list, ok := jsonList(rest); ok {
			vols = list
		} else {
			var err error
			if vols, err = shellWords(rest, env); err != nil {
				return err
			}
		}
		for _, v := range vols {
			if v == "" {
				return errors.New("VOLUME with an empty path")
			}
			if cfg.Volumes == nil {
				cfg.Volumes = map[string]struct{}{}
			}
			cfg.Volumes[v] = struct{}{}
		}
	case "ONBUILD":
		cfg.OnBuild = append(cfg.OnBuild, rest)
	default:
		return fmt.Errorf("unknown instruction %s (want CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME or WORKDIR)", instr)
	}
	return nil
}

// commandForm is the argv of a CMD or ENTRYPOINT: the JSON form as is,
// the shell form run by the image's shell (default /bin/sh -c).
func commandForm(s string, shell []string) []string {
	if list, ok := jsonList(s); ok {
		return list
	}
	if len(shell) == 0 {
		shell = []string{"/bin/sh", "-c"}
	}
	return append(append([]string{}, shell...), s)
}

// jsonList parses the JSON form of an instruction: an array of strings.
func jsonList(s string) ([]string, bool) {
	if !strings.HasPrefix(s, "[") {
		return nil, false
	}
	var list []string
	if err := json.Unmarshal([]byte(s), &list); err != nil {
		return nil, false
	}
	return list, true
}

// oneWord is the single value of WORKDIR, USER or STOPSIGNAL.
func oneWord(instr, s string, env map[string]string) (string, error) {
	words, err := shellWords(s, env)
	if err != nil {
		return "", err
	}
	if len(words) != 1 || words[0] == "" {
		return "", fmt.Errorf("%s takes one value", instr)
	}
	return words[0], nil
}

// keyValues parses `K=V K2="v 2"`, or the legacy `K the value` form
// (one pair, the value being the rest of the line).
func keyValues(instr, s string, env map[string]string) ([][2]string, error) {
	words, err := shellWords(s, env)
	if err != nil {
		return nil, err
	}
	first := strings.Fields(s)[0]
	if !strings.Contains(first, "=") {
		// Legacy form: KEY VALUE...
		key := words[0]
		rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(s), first))
		if rest == "" {
			return nil, fmt.Errorf("%s %s has no value", instr, key)
		}
		vals, err := shellWords(rest, env)
		if err != nil {
			return nil, err
		}
		return [][2]string{{key, strings.Join(vals, " ")}}, nil
	}
	var out [][2]string
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not KEY=VALUE", instr, w)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// shellWords splits s into words as a Dockerfile does: blanks separate,
// single quotes keep everything, double quotes keep blanks and allow \"
// and variables, a backslash escapes the next character, and $VAR or
// ${VAR} outside single quotes expand from env (unknown ones to "").
func shellWords(s string, env map[string]string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				switch {
				case s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\' || s[i+1] == '$'):
					i++
					cur.WriteByte(s[i])
				case s[i] == '$':
					n := expandVar(s[i:], env, &cur)
					i += n - 1
				default:
					cur.WriteByte(s[i])
				}
			}
			if i >= len(s) {
				return nil, errors.New("unterminated double quote")
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
		case c == '$':
			inWord = true
			n := expandVar(s[i:], env, &cur)
			i += n - 1
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// expandVar expands the variable reference at the start of s ("$NAME",
// "${NAME}") into out and returns how many bytes of s it used. A lone
// "$" is kept.
func expandVar(s string, env map[string]string, out *strings.Builder) int {
	if len(s) > 1 && s[1] == '{' {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			out.WriteByte('$')
			return 1
		}
		out.WriteString(env[s[2:end]])
		return end + 1
	}
	n := 1
	for n < len(s) && (s[n] == '_' || s[n] >= 'a' && s[n] <= 'z' || s[n] >= 'A' && s[n] <= 'Z' || n > 1 && s[n] >= '0' && s[n] <= '9') {
		n++
	}
	if n == 1 {
		out.WriteByte('$')
		return 1
	}
	out.WriteString(env[s[1:n]])
	return n
}

func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// setEnv replaces or appends key in env.
func setEnv(env []string, key, value string) []string {
	out := append([]string{}, env...)
	for i, kv := range out {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			out[i] = key + "=" + value
			return out
		}
	}
	return append(out, key+"="+value)
}

// parsePorts parses an EXPOSE word: PORT, PORT/PROTO or FROM-TO[/PROTO].
func parsePorts(w string) ([]string, error) {
	p, proto, ok := strings.Cut(w, "/")
	if !ok {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" && proto != "sctp" {
		return nil, fmt.Errorf("EXPOSE %s: protocol must be tcp, udp or sctp", w)
	}
	lo, hi, isRange := strings.Cut(p, "-")
	from, err := strconv.ParseUint(lo, 10, 16)
	if err != nil || from == 0 {
		return nil, fmt.Errorf("EXPOSE %s: not a port", w)
	}
	to := from
	if isRange {
		if to, err = strconv.ParseUint(hi, 10, 16); err != nil || to < from {
			return nil, fmt.Errorf("EXPOSE %s: not a port range", w)
		}
	}
	var out []string
	for n := from; n <= to; n++ {
		out = append(out, fmt.Sprintf("%d/%s", n, proto))
	}
	return out, nil
}
