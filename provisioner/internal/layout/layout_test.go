package layout

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ramboot/ramboot/provisioner/config"
)

const module = "github.com/ramboot/ramboot"

// allowed lists, per top-level area, the other areas it may import.
var allowed = map[string][]string{
	"pxe":         nil,
	"images":      nil,
	"nodeagent":   {"images"},
	"provisioner": {"pxe", "images"},
}

type pkg struct {
	ImportPath   string
	Dir          string
	Name         string
	GoFiles      []string
	CgoFiles     []string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

func area(importPath string) string {
	rest := strings.TrimPrefix(importPath, module+"/")
	a, _, _ := strings.Cut(rest, "/")
	return a
}

func TestImportRules(t *testing.T) {
	for _, p := range listPackages(t) {
		from := area(p.ImportPath)
		ok, known := allowed[from]
		if !known {
			t.Errorf("%s: package outside the fixed top-level areas", p.ImportPath)
			continue
		}
		imports := append(append(append([]string{}, p.Imports...), p.TestImports...), p.XTestImports...)
		for _, imp := range imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := area(imp)
			if to == from {
				continue
			}
			permitted := false
			for _, a := range ok {
				permitted = permitted || a == to
			}
			if !permitted {
				t.Errorf("%s imports %s: %s may import only %v", p.ImportPath, imp, from, ok)
			}
			if from == "nodeagent" && to == "images" && imp != module+"/images" && imp != module+"/images/overlay" {
				t.Errorf("%s imports %s: nodeagent may use only the images formats (images, images/overlay)", p.ImportPath, imp)
			}
		}
	}
}

func TestPackageComments(t *testing.T) {
	for _, p := range listPackages(t) {
		var docs []string
		for _, f := range append(p.GoFiles, p.CgoFiles...) {
			af, err := parser.ParseFile(token.NewFileSet(), filepath.Join(p.Dir, f), nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if af.Doc == nil {
				continue
			}
			docs = append(docs, f)
			text := af.Doc.Text()
			want := "Package " + p.Name + " "
			if p.Name == "main" {
				want = "Command "
			}
			if !strings.HasPrefix(text, want) {
				t.Errorf("%s: package comment in %s must start with %q", p.ImportPath, f, want)
			}
		}
		if len(docs) != 1 {
			t.Errorf("%s: want exactly one file with a package comment, found %d %v", p.ImportPath, len(docs), docs)
		}
	}
}

// TestConfigKeysDocumented: every configuration key is in docs/config.md.
func TestConfigKeysDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range config.Keys() {
		if !strings.Contains(string(doc), "`"+k+"`") {
			t.Errorf("config key %s is not in docs/config.md", k)
		}
	}
}

// TestClientsUseWireTypes: the admin API owns its wire types; the CLI and
// the API client never import the state package (storage types stay
// behind the store).
func TestClientsUseWireTypes(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.ImportPath != module+"/provisioner/cmd/ramboot" && p.ImportPath != module+"/provisioner/apiclient" {
			continue
		}
		for _, imp := range p.Imports {
			if imp == module+"/provisioner/state" || imp == module+"/provisioner/store" {
				t.Errorf("%s imports %s: use provisioner/api's wire types", p.ImportPath, imp)
			}
		}
	}
}
