package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestEveryCommandDocumented: every command and every flag of the CLI is
// in docs/cli.md.
func TestEveryCommandDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	g := &globals{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	root := &cobra.Command{Use: "ramboot"}
	root.AddCommand(commands(g)...)
	var walk func(c *cobra.Command, path string)
	walk = func(c *cobra.Command, path string) {
		for _, sub := range c.Commands() {
			p := strings.TrimSpace(path + " " + sub.Name())
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			if !sub.HasSubCommands() && !bytes.Contains(doc, []byte("ramboot "+p)) {
				t.Errorf("command `ramboot %s` is not in docs/cli.md", p)
			}
			sub.Flags().VisitAll(func(f *pflag.Flag) {
				if f.Name == "help" {
					return
				}
				if !bytes.Contains(doc, []byte("--"+f.Name)) {
					t.Errorf("flag --%s of `ramboot %s` is not in docs/cli.md", f.Name, p)
				}
			})
			walk(sub, p)
		}
	}
	walk(root, "")
}
