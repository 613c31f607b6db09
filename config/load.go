package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Loader reads a configuration. Its fields are the seams to the outside
// world; a nil field means the real one, so the zero Loader is what Load and
// Parse use, and tests set their own environment without touching the
// process's (and so can run in parallel).
type Loader struct {
	Getenv   func(name string) (string, bool)  // nil: os.LookupEnv
	ReadFile func(path string) ([]byte, error) // nil: os.ReadFile
	Hostname func() (string, error)            // nil: os.Hostname

	// UnresolvedSecrets is for commands that use no secret (`sluice dkim
	// dns`, `policy explain`, the state_dir readers): the secrets of
	// upstreams and of the webhook whose ${NAME} is not set stay as
	// written, and their *_file secrets are not read. Such a Config must
	// never be used to connect or sign.
	UnresolvedSecrets bool
}

// Load reads, expands, fills in defaults and validates the file at path.
func Load(path string) (*Config, error) { return (&Loader{}).Load(path) }

// Parse is Load from bytes; path names the file in errors and is the base for
// relative paths inside it ("" means the current directory).
func Parse(data []byte, path string) (*Config, error) { return (&Loader{}).Parse(data, path) }

func (l *Loader) getenv(name string) (string, bool) {
	if l.Getenv != nil {
		return l.Getenv(name)
	}
	return os.LookupEnv(name)
}

func (l *Loader) readFile(path string) ([]byte, error) {
	if l.ReadFile != nil {
		return l.ReadFile(path)
	}
	return os.ReadFile(path)
}

func (l *Loader) hostname() (string, error) {
	if l.Hostname != nil {
		return l.Hostname()
	}
	return os.Hostname()
}

// Load reads the file at path and parses it.
func (l *Loader) Load(path string) (*Config, error) {
	data, err := l.readFile(path)
	if err != nil {
		return nil, Errors{{File: path, Problem: fmt.Sprintf("cannot read: %v", unwrapPath(err))}}
	}
	return l.Parse(data, path)
}

// unwrapPath drops the path from an *os.PathError, which the caller already names.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Parse decodes data, expands ${NAME} and *_file secrets, reads users_file,
// resolves relative paths against path's directory, fills defaults and
// validates. On any problem it returns every problem as Errors.
func (l *Loader) Parse(data []byte, path string) (*Config, error) {
	d := &decoder{
		l:       l,
		file:    path,
		dir:     filepath.Dir(path),
		lines:   map[string]int{},
		present: map[string]bool{},
		bad:     map[string]bool{},
		budget:  maxNodes,
	}
	if path == "" {
		d.dir = "."
	}
	c := &Config{Path: path}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	switch {
	case err == io.EOF:
		// An empty file: validation reports what is missing.
	case err != nil:
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		line := 0
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
			line = syntaxLine(data, msg, line)
		}
		if unquotedVar(data, line) {
			msg += ` (quote values that use ${NAME}: "${NAME}")`
		}
		return nil, Errors{{File: path, Line: line, Problem: "yaml: " + msg}}
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); err != io.EOF {
			line := extra.Line
			if err != nil {
				line = 0
			}
			return nil, Errors{{File: path, Line: line, Problem: "yaml: only one document is allowed"}}
		}
		root := &doc
		if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
			root = root.Content[0]
		}
		d.lines[""] = root.Line
		if !isNull(root) {
			d.decodeStruct(d.resolve(root), reflect.ValueOf(c).Elem(), "")
		}
	}

	for i := range c.Listeners {
		c.Listeners[i].Line = d.lines[fmt.Sprintf("listeners[%d]", i)]
	}
	for i := range c.Users {
		c.Users[i].File, c.Users[i].Line = path, d.lines[fmt.Sprintf("users[%d]", i)]
	}
	resolvePaths(c, d.dir)
	if c.UsersFile != "" && !d.bad["users_file"] {
		users, errs := l.readUsers(c.UsersFile)
		if errs != nil {
			d.errs = append(d.errs, errs...)
		}
		c.Users = append(c.Users, users...)
	}
	if err := l.setDefaults(c, d.present); err != nil {
		d.errorf(0, "hostname", "%v (set hostname)", err)
	}
	v := &validator{l: l, file: path, lines: d.lines, bad: d.bad}
	v.validate(c)
	errs := append(d.errs, v.errs...)
	if len(errs) > 0 {
		errs.sort()
		return nil, errs
	}
	return c, nil
}

// syntaxLine finds the line of a YAML syntax error. yaml.v3 reports the line
// where the enclosing construct began (a list three lines up from a bad
// indent), not the line at fault. The shortest prefix of the document, in
// whole lines, that fails with the same message ends at the faulty line; a
// binary search finds it in a few parses.
func syntaxLine(data []byte, msg string, reported int) int {
	lines := bytes.SplitAfter(data, []byte("\n"))
	fails := func(n int) bool {
		var node yaml.Node
		err := yaml.NewDecoder(bytes.NewReader(bytes.Join(lines[:n], nil))).Decode(&node)
		return err != nil && strings.HasSuffix(err.Error(), ": "+msg)
	}
	lo, hi := max(reported, 1), len(lines)
	if lo > hi {
		return reported
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// unquotedVar reports whether the line of a YAML syntax error (or the one
// before it) holds an unquoted ${NAME}: in a flow mapping or sequence
// ({username: ${EV}}) the braces are YAML syntax, so the value must be quoted.
func unquotedVar(data []byte, line int) bool {
	lines := bytes.Split(data, []byte("\n"))
	for n := line - 1; n <= line; n++ {
		if n < 1 || n > len(lines) {
			continue
		}
		l := lines[n-1]
		if i := bytes.Index(l, []byte("${")); i >= 0 && !bytes.ContainsAny(l[:i], `"'`) {
			return true
		}
	}
	return false
}

// resolvePaths makes relative paths relative to the config file's directory,
// so that "sluice -c /etc/sluice/sluice.yaml" behaves the same from any
// working directory.
func resolvePaths(c *Config, dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.StateDir)
	abs(&c.TLS.CertFile)
	abs(&c.TLS.KeyFile)
	abs(&c.UsersFile)
	for i := range c.DKIM {
		abs(&c.DKIM[i].KeyFile)
	}
	for i := range c.Upstreams {
		abs(&c.Upstreams[i].TLSCAFile)
		abs(&c.Upstreams[i].Path)
	}
}

// readUsers reads an htpasswd-style file: "name:hash[:policy]" per line,
// blank lines and "#" comments ignored. Errors name that file and its line.
func (l *Loader) readUsers(path string) ([]User, Errors) {
	data, err := l.readFile(path)
	if err != nil {
		return nil, Errors{{File: path, Key: "users_file", Problem: fmt.Sprintf("cannot read: %v", unwrapPath(err))}}
	}
	var users []User
	var errs Errors
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fail := func(problem string) {
			errs = append(errs, Error{File: path, Line: i + 1, Key: "users_file", Problem: problem})
		}
		f := strings.Split(line, ":")
		switch {
		case f[0] == "":
			fail("line has no user name")
		case len(f) < 2 || f[1] == "":
			fail("line has no password hash")
		case len(f) > 3:
			fail("line has more than three fields (name:hash:policy)")
		default:
			u := User{Name: f[0], PasswordHash: f[1], File: path, Line: i + 1}
			if len(f) == 3 {
				u.Policy = f[2]
			}
			users = append(users, u)
		}
	}
	return users, errs
}
