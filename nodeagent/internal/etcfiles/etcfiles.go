// Package etcfiles writes the node's name files into its root file system:
// /etc/hostname, /etc/hosts and /etc/resolv.conf, from the node
// configuration, but those the node's overlay provides (Files.Keep).
//
//	err := etcfiles.Write("/", etcfiles.Files{
//		Hostname: "n001",
//		Address:  netip.MustParseAddr("10.77.0.10"),
//		DNS:      []string{"10.77.0.1"},
//	})
package etcfiles

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// Files is what the name files say.
type Files struct {
	// Hostname is the node's host name; required. When it has dots, its
	// first label is also listed in /etc/hosts as an alias.
	Hostname string
	// Address is the node's address on the provisioning network; the zero
	// Addr leaves the host name out of /etc/hosts.
	Address netip.Addr
	// DNS lists name servers. Empty leaves /etc/resolv.conf as the image
	// has it.
	DNS []string
	// Keep reports which of the files (relative to root, slash-separated:
	// "etc/hosts") to leave alone, because the node's overlay provides
	// them; nil writes all three.
	Keep func(path string) bool
}

// Hosts returns the content of /etc/hosts.
func (f Files) Hosts() []byte {
	var b bytes.Buffer
	b.WriteString("# Written by ramboot-agent at boot.\n")
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	if f.Address.IsValid() {
		names := f.Hostname
		if short, _, ok := strings.Cut(f.Hostname, "."); ok && short != "" {
			names += " " + short
		}
		fmt.Fprintf(&b, "%s\t%s\n", f.Address, names)
	}
	return b.Bytes()
}

// Resolv returns the content of /etc/resolv.conf.
func (f Files) Resolv() []byte {
	var b bytes.Buffer
	b.WriteString("# Written by ramboot-agent at boot.\n")
	for _, s := range f.DNS {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.Bytes()
}

// Names returns the paths Write writes under root.
func (f Files) Names(root string) []string {
	var names []string
	for _, file := range f.files() {
		names = append(names, filepath.Join(root, filepath.FromSlash(file.path)))
	}
	return names
}

type file struct {
	path string // relative to the root, slash-separated
	data []byte
}

// files returns the files Write writes: the three name files but those
// that f.Keep keeps, and resolv.conf only with name servers.
func (f Files) files() []file {
	all := []file{{"etc/hostname", []byte(f.Hostname + "\n")}, {"etc/hosts", f.Hosts()}}
	if len(f.DNS) > 0 {
		all = append(all, file{"etc/resolv.conf", f.Resolv()})
	}
	var out []file
	for _, x := range all {
		if f.Keep == nil || !f.Keep(x.path) {
			out = append(out, x)
		}
	}
	return out
}

// Write writes etc/hostname, etc/hosts and, when DNS is set,
// etc/resolv.conf under root, but those f.Keep keeps, each through a
// temporary file that is renamed into place (so a symbolic link there,
// such as systemd-resolved's resolv.conf, is replaced by a plain file). It
// creates root/etc if needed.
func Write(root string, f Files) error {
	if f.Hostname == "" {
		return fmt.Errorf("write name files: empty host name")
	}
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return fmt.Errorf("write name files: %w", err)
	}
	for _, file := range f.files() {
		if err := WriteFile(filepath.Join(root, filepath.FromSlash(file.path)), file.data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// WriteFile replaces path with data and mode perm atomically: it writes a
// temporary file beside path and renames it over path, so a reader sees
// the old content or the new, never a part. A symbolic link at path is
// replaced, not followed.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
