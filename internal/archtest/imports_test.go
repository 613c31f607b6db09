// Package archtest keeps the tree reading as the journey: imports point one
// way (cmd → relay → policy | signing | queue → upstream | spool → config;
// spool is the file protocol under queue; journal is below relay and queue,
// beside config), and
// relay never reaches upstream, so the only way to the network is through
// the spool (STYLE.md convention 1).
package archtest

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/sluicemail/sluice/"

// allowed lists, per package, the project packages its non-test files may import.
var allowed = map[string][]string{
	"config":   {},
	"upstream": {"config"},
	"signing":  {"config"},
	"policy":   {"config"},
	"journal":  {"config"},
	"spool":    {"config"},
	"suppress": {"config", "journal"},
	"queue":    {"config", "upstream", "journal", "spool", "suppress"},
	"relay":    {"config", "policy", "signing", "queue", "journal", "suppress"},
	"hooks":    {"config", "journal", "queue", "suppress"},
	// statuspage renders what cmd/sluice hands it; it reads the journal.
	"statuspage": {"journal"},
}

func TestImportsPointOneWay(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for pkg, ok := range allowed {
		files, _ := filepath.Glob(filepath.Join(root, pkg, "*.go"))
		if len(files) == 0 {
			t.Errorf("package %s has no files (moved?)", pkg)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				path := strings.Trim(imp.Path.Value, `"`)
				dep, isOurs := strings.CutPrefix(path, module)
				if !isOurs || strings.HasPrefix(dep, "internal/") {
					continue
				}
				if !contains(ok, dep) {
					t.Errorf("%s imports %s: against the direction of the journey (allowed: %v)", filepath.Join(pkg, filepath.Base(f)), dep, ok)
				}
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
