package nodeagent_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocs enforces the house rules on every package under nodeagent/:
// exactly one package comment, and a comment on every exported name
// (types, functions, methods, constants, variables, struct fields).
func TestDocs(t *testing.T) {
	pkgs := map[string][]*ast.File{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		pkgs[filepath.Dir(path)] = append(pkgs[filepath.Dir(path)], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 8 {
		t.Fatalf("found only %d packages", len(pkgs))
	}
	for dir, files := range pkgs {
		t.Run(dir, func(t *testing.T) {
			var docs []string
			for _, f := range files {
				if f.Doc != nil {
					docs = append(docs, fset.Position(f.Package).Filename)
					if !strings.Contains(f.Doc.Text(), "\t") {
						t.Errorf("%s: package comment has no usage sketch (an indented block)", fset.Position(f.Package).Filename)
					}
				}
			}
			if len(docs) != 1 {
				t.Errorf("package %s has %d package comments (%v), want 1", dir, len(docs), docs)
			}
			for _, f := range files {
				if f.Name.Name == "main" {
					continue
				}
				checkExported(t, fset, f)
			}
		})
	}
}

func checkExported(t *testing.T, fset *token.FileSet, f *ast.File) {
	missing := func(pos token.Pos, name string) {
		t.Errorf("%s: exported %s has no comment", fset.Position(pos), name)
	}
	for _, decl := range f.Decls {
		switch d := decl.(type) {
		case *ast.FuncDecl:
			if !d.Name.IsExported() {
				continue
			}
			if d.Recv != nil {
				recv := d.Recv.List[0].Type
				if s, ok := recv.(*ast.StarExpr); ok {
					recv = s.X
				}
				if id, ok := recv.(*ast.Ident); ok && !id.IsExported() {
					continue
				}
			}
			if d.Doc == nil {
				missing(d.Pos(), d.Name.Name)
			}
		case *ast.GenDecl:
			for _, spec := range d.Specs {
				switch s := spec.(type) {
				case *ast.TypeSpec:
					if !s.Name.IsExported() {
						continue
					}
					if s.Doc == nil && d.Doc == nil {
						missing(s.Pos(), s.Name.Name)
					}
					if st, ok := s.Type.(*ast.StructType); ok {
						for _, fld := range st.Fields.List {
							for _, n := range fld.Names {
								if n.IsExported() && fld.Doc == nil {
									missing(n.Pos(), s.Name.Name+"."+n.Name)
								}
							}
						}
					}
				case *ast.ValueSpec:
					for _, n := range s.Names {
						if n.IsExported() && s.Doc == nil && d.Doc == nil {
							missing(n.Pos(), n.Name)
						}
					}
				}
			}
		}
	}
}
