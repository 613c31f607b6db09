package config

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// The YAML is decoded into a yaml.Node and walked here against the structs'
// yaml tags, rather than unmarshalled: (*yaml.Node).Decode ignores
// KnownFields, yaml.v3 stops describing errors after the first, and only the
// node tree knows the line of every key. Walking it ourselves gives every
// error its line and dotted key, parses our own scalars (sizes, durations,
// rates), expands ${NAME} in every scalar, and reads *_file secrets.

// ownScalars are our own scalar types: what each is called in errors, and
// its parser (whose error is the message).
var ownScalars = map[reflect.Type]struct {
	what  string
	parse func(string) (any, error)
}{
	reflect.TypeFor[time.Duration](): {"a duration", func(s string) (any, error) {
		d, err := ParseDuration(s)
		if err == nil && d < 0 {
			err = fmt.Errorf("duration %q must not be negative", s)
		}
		return d, err
	}},
	reflect.TypeFor[Size](): {"a size", func(s string) (any, error) { return ParseSize(s) }},
	reflect.TypeFor[Rate](): {"a rate", func(s string) (any, error) { return ParseRate(s) }},
}

// secretFiles lists, per struct, the keys that read a secret from a file and
// the key of the field the secret fills. Paths such as cert_file are not here:
// they are values in their own right.
var secretFiles = map[reflect.Type]map[string]string{
	reflect.TypeFor[Upstream](): {"password_file": "password", "username_file": "username",
		"secret_access_key_file": "secret_access_key", "api_key_file": "api_key", "client_secret_file": "client_secret"},
	reflect.TypeFor[OAuth2](): {"client_secret_file": "client_secret", "refresh_token_file": "refresh_token", "client_id_file": "client_id"},
	reflect.TypeFor[User]():   {"password_hash_file": "password_hash"},
	reflect.TypeFor[Queue]():  {"webhook_secret_file": "webhook_secret"},
	reflect.TypeFor[Hooks]():  {"token_file": "token", "mailgun_signing_key_file": "mailgun_signing_key"},
}

// maxNodes bounds the work of one decode: aliases can make a small document
// expand exponentially ("billion laughs"); no real config comes near this.
const maxNodes = 200000

type decoder struct {
	l       *Loader
	file    string
	dir     string // the config file's directory, for relative *_file paths
	errs    Errors
	lines   map[string]int  // dotted key → line of the key (or sequence item)
	present map[string]bool // keys given a non-null value
	bad     map[string]bool // keys whose value failed to decode: validation skips them
	budget  int
}

func (d *decoder) errorf(line int, key, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Line: line, Key: key, Problem: fmt.Sprintf(format, args...)})
	if key != "" {
		d.bad[key] = true
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// resolve follows aliases.
func (d *decoder) resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

type pair struct{ key, value *yaml.Node }

// pairs lists a mapping's entries with merge keys ("<<: *base") expanded;
// explicit keys win over merged ones, as YAML specifies. Duplicate explicit
// keys are errors (yaml.v3 reports them only when decoding into values).
func (d *decoder) pairs(n *yaml.Node, path string, explicit bool) []pair {
	var out, merged []pair
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := d.resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(k.Line, path, "keys must be plain strings, got %s", kindName(k))
			continue
		}
		if k.Value == "<<" && k.Tag == "!!merge" {
			v = d.resolve(v)
			srcs := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				s = d.resolve(s)
				if s.Kind != yaml.MappingNode {
					d.errorf(k.Line, path, "<< must merge a mapping, got %s", kindName(s))
					continue
				}
				if d.budget--; d.budget < 0 {
					return out
				}
				merged = append(merged, d.pairs(s, path, false)...)
			}
			continue
		}
		if seen[k.Value] {
			if explicit {
				d.errorf(k.Line, join(path, k.Value), "duplicate key")
			}
			continue
		}
		seen[k.Value] = true
		out = append(out, pair{k, v})
	}
	for _, p := range merged {
		if !seen[p.key.Value] {
			seen[p.key.Value] = true
			out = append(out, p)
		}
	}
	return out
}

// scalar returns the node's value with ${NAME} expanded, or false after
// recording why it cannot.
func (d *decoder) scalar(n *yaml.Node, path, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n.Line, path, "expected %s, got %s", want, kindName(n))
		return "", false
	}
	s, err := expand(n.Value, d.getenv(path))
	if err != nil {
		d.errorf(n.Line, path, "%v", err)
		return "", false
	}
	if s == "" && strings.Contains(n.Value, "${") {
		// An empty variable would otherwise read as the key not being
		// set and silently take its default (hostname: ${EV} with EV=
		// becoming the machine's name): a set but empty variable is a
		// mistake in the environment, so say which one.
		name := n.Value[strings.Index(n.Value, "${")+2:]
		name = name[:strings.IndexByte(name, '}')]
		d.errorf(n.Line, path, "${%s} is set but empty", name)
		return "", false
	}
	return s, true
}

// expand replaces ${NAME} from the environment. A "$" not followed by "{" is
// kept as is, because bcrypt and argon2 hashes are full of them.
func expand(s string, getenv func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated %q", s[i:])
		}
		name := s[i+2 : i+end]
		if !validEnvName(name) {
			return "", fmt.Errorf("bad variable name in %q", s[i:i+end+1])
		}
		v, ok := getenv(name)
		if !ok {
			return "", fmt.Errorf("${%s} is not set", name)
		}
		b.WriteString(v)
		s = s[i+end+1:]
	}
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(s) {
	case "true", "yes", "on":
		return true, true
	case "false", "no", "off":
		return false, true
	}
	return false, false
}

// decode fills v from n; path is v's dotted key.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if d.budget--; d.budget < 0 {
		if d.budget == -1 {
			d.errorf(n.Line, "", "document too large (aliases expand to more than %d values)", maxNodes)
		}
		return
	}
	n = d.resolve(n)
	if n.Kind == yaml.AliasNode {
		d.errorf(n.Line, path, "alias nests too deeply")
		return
	}
	if isNull(n) {
		return // absent: the default applies
	}
	d.present[path] = true
	t := v.Type()
	if own, ok := ownScalars[t]; ok {
		if s, ok := d.scalar(n, path, own.what); ok {
			if x, err := own.parse(s); err != nil {
				d.errorf(n.Line, path, "%v", err)
			} else {
				v.Set(reflect.ValueOf(x))
			}
		}
		return
	}
	switch t.Kind() {
	case reflect.String:
		if s, ok := d.scalar(n, path, "a string"); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if s, ok := d.scalar(n, path, "true or false"); ok {
			if b, ok := parseBool(s); ok {
				v.SetBool(b)
			} else {
				d.errorf(n.Line, path, "expected true or false, got %q", s)
			}
		}
	case reflect.Int:
		if s, ok := d.scalar(n, path, "a whole number"); ok {
			if i, err := strconv.ParseInt(s, 10, strconv.IntSize); err != nil {
				d.errorf(n.Line, path, "expected a whole number, got %q", s)
			} else {
				v.SetInt(i)
			}
		}
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n.Line, path, "expected a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			d.decode(item, s.Index(i), p)
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.errorf(n.Line, path, "expected a mapping, got %s", kindName(n))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(t))
		}
		for _, p := range d.pairs(n, path, true) {
			key := join(path, p.key.Value)
			d.lines[key] = p.key.Line
			e := reflect.New(t.Elem()).Elem()
			if t.Elem().Kind() == reflect.Pointer {
				e.Set(reflect.New(t.Elem().Elem())) // "default:" with no body is an empty policy
			}
			d.decode(p.value, e, key)
			v.SetMapIndex(reflect.ValueOf(p.key.Value), e)
		}
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	default:
		d.errorf(n.Line, path, "internal: cannot decode %s", t)
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.errorf(n.Line, path, "expected a mapping, got %s", kindName(n))
		return
	}
	t := v.Type()
	fields := map[string]int{}
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" {
			fields[tag] = i
		}
	}
	secrets := secretFiles[t]
	type pending struct {
		key    string
		line   int
		target string
		file   string
	}
	var files []pending
	for _, p := range d.pairs(n, path, true) {
		name := p.key.Value
		key := join(path, name)
		d.lines[key] = p.key.Line
		if i, ok := fields[name]; ok {
			d.decode(p.value, v.Field(i), key)
			continue
		}
		if target, ok := secrets[name]; ok {
			var file string
			d.decode(p.value, reflect.ValueOf(&file).Elem(), key)
			if file != "" {
				files = append(files, pending{key, p.key.Line, target, file})
			}
			continue
		}
		d.errorf(p.key.Line, key, "unknown key")
	}
	// Secrets are read once the whole mapping is known, so that giving both
	// password and password_file is caught whatever their order.
	for _, f := range files {
		fv := v.Field(fields[f.target])
		if d.present[join(path, f.target)] {
			d.errorf(f.line, f.key, "%s and %s are both set; use one", f.target, f.key[strings.LastIndex(f.key, ".")+1:])
			continue
		}
		if d.l.UnresolvedSecrets && unresolvable(join(path, f.target)) {
			fv.SetString("(unread " + f.file + ")")
			d.present[join(path, f.target)] = true
			continue
		}
		p := f.file
		if !filepath.IsAbs(p) {
			p = filepath.Join(d.dir, p)
		}
		b, err := d.l.readFile(p)
		if err != nil {
			d.errorf(f.line, f.key, "%v", err)
			continue
		}
		secret := strings.TrimRight(string(b), "\r\n")
		if secret == "" {
			d.errorf(f.line, f.key, "%s is empty", p)
			continue
		}
		fv.SetString(secret)
		d.present[join(path, f.target)] = true
	}
}
