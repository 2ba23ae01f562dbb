// Package etcfiles writes the node's name files into its root file system:
// /etc/hostname, /etc/hosts and /etc/resolv.conf, from the node
// configuration.
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
	names := []string{filepath.Join(root, "etc", "hostname"), filepath.Join(root, "etc", "hosts")}
	if len(f.DNS) > 0 {
		names = append(names, filepath.Join(root, "etc", "resolv.conf"))
	}
	return names
}

// Write writes etc/hostname, etc/hosts and, when DNS is set,
// etc/resolv.conf under root, each through a temporary file that is
// renamed into place (so a symbolic link there, such as systemd-resolved's
// resolv.conf, is replaced by a plain file). It creates root/etc if
// needed.
func Write(root string, f Files) error {
	if f.Hostname == "" {
		return fmt.Errorf("write name files: empty host name")
	}
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return fmt.Errorf("write name files: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{"hostname", []byte(f.Hostname + "\n")},
		{"hosts", f.Hosts()},
	}
	if len(f.DNS) > 0 {
		files = append(files, struct {
			name string
			data []byte
		}{"resolv.conf", f.Resolv()})
	}
	for _, file := range files {
		if err := WriteFile(filepath.Join(etc, file.name), file.data, 0o644); err != nil {
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
