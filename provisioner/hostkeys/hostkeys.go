// Package hostkeys gives every node SSH host keys that are generated once
// and kept on the head, so that a diskless node presents the same host key
// after every boot, and writes the cluster's known_hosts.
//
//	store := &hostkeys.Dir{Path: "/var/lib/ramboot/ssh-host-keys"}
//	keys, err := hostkeys.Ensure(ctx, store, []string{"n001", "n002"}, nil)
//	for _, k := range keys["n001"] {
//		priv, _ := k.PrivateFile()          // etc/ssh/ssh_host_ed25519_key, 0600
//		pub := k.PublicFile("root@n001")   // etc/ssh/ssh_host_ed25519_key.pub, 0644
//		...
//	}
//	err = hostkeys.WriteKnownHosts(w, []hostkeys.Host{{Names: []string{"n001", "10.0.0.11"}, Keys: keys["n001"]}})
//
// # Key types
//
// [DefaultTypes] is Ed25519 and ECDSA P-256. OpenSSH's `ssh-keygen -A`
// also makes a 3072-bit RSA key; RSA is available ([RSA]) but not made by
// default, because generating one takes tens to hundreds of milliseconds:
// minutes of CPU for a 10,000-node cluster, for a key type every client
// since OpenSSH 6.5 (2014) can do without. Keys are written in OpenSSH's
// own private key format, the one ssh-keygen writes.
//
// # Store
//
// A [Store] keeps each node's keys; [Dir] is the implementation on the
// head's disk: one directory per node holding the OpenSSH files, all 0600
// in a 0700 tree. A node's directory appears whole or not at all: it is
// written under a temporary name and renamed into place without replacing
// an existing one, so two heads (or two requests) that race to create a
// node's keys agree on the first one written. A batch of new nodes costs
// two file system syncs, not two per node.
package hostkeys

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Type is an SSH host key type, as in the file name ssh_host_<type>_key.
type Type string

// The key types.
const (
	ED25519 Type = "ed25519"
	ECDSA   Type = "ecdsa" // NIST P-256
	RSA     Type = "rsa"   // 3072 bits, OpenSSH's default size
)

// rsaBits is the size of RSA keys, OpenSSH's default since 8.0.
const rsaBits = 3072

// DefaultTypes are the key types generated when none are named.
var DefaultTypes = []Type{ED25519, ECDSA}

// Key is one host key.
type Key struct {
	// Type is the key's type.
	Type Type
	// Private is the private key: ed25519.PrivateKey, *ecdsa.PrivateKey or
	// *rsa.PrivateKey.
	Private crypto.Signer

	// file is the private key file as stored (OpenSSH's format holds
	// random check bytes, so encoding again would give other bytes).
	file []byte
}

// Keys are a node's host keys, one per type, in the order of the types
// they were generated with.
type Keys []Key

// Generate makes one key of each type; nil types means DefaultTypes.
func Generate(types []Type) (Keys, error) {
	if types == nil {
		types = DefaultTypes
	}
	var ks Keys
	for _, t := range types {
		if slices.ContainsFunc(ks, func(k Key) bool { return k.Type == t }) {
			return nil, fmt.Errorf("generate host keys: type %s given twice", t)
		}
		var (
			priv crypto.Signer
			err  error
		)
		switch t {
		case ED25519:
			_, priv, err = ed25519.GenerateKey(rand.Reader)
		case ECDSA:
			priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case RSA:
			priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
		default:
			return nil, fmt.Errorf("generate host keys: unknown type %q (want ed25519, ecdsa or rsa)", t)
		}
		if err != nil {
			return nil, fmt.Errorf("generate %s host key: %w", t, err)
		}
		k := Key{Type: t, Private: priv}
		if k.file, err = k.PrivateFile(); err != nil {
			return nil, err
		}
		ks = append(ks, k)
	}
	return ks, nil
}

// FileName returns the key's file name in /etc/ssh, e.g.
// "ssh_host_ed25519_key"; the public key is that name plus ".pub".
func (k Key) FileName() string { return "ssh_host_" + string(k.Type) + "_key" }

// PublicKey returns the key's public half.
func (k Key) PublicKey() (ssh.PublicKey, error) {
	p, err := ssh.NewPublicKey(k.Private.Public())
	if err != nil {
		return nil, fmt.Errorf("%s host key: %w", k.Type, err)
	}
	return p, nil
}

// PrivateFile returns the private key file's content in OpenSSH's format:
// the same bytes every time for a key that Generate made or a Store
// loaded.
func (k Key) PrivateFile() ([]byte, error) {
	if k.file != nil {
		return k.file, nil
	}
	b, err := ssh.MarshalPrivateKey(k.Private, "")
	if err != nil {
		return nil, fmt.Errorf("encode %s host key: %w", k.Type, err)
	}
	return pem.EncodeToMemory(b), nil
}

// PublicFile returns the public key file's content: one authorized_keys
// line with comment (ssh-keygen writes "root@HOSTNAME").
func (k Key) PublicFile(comment string) []byte {
	p, err := k.PublicKey()
	if err != nil {
		return nil // Private came from Generate or parse: never happens
	}
	line := strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(p)), "\n")
	if comment != "" {
		line += " " + comment
	}
	return []byte(line + "\n")
}

// parseKey reads a private key file of type t.
func parseKey(t Type, b []byte) (Key, error) {
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		return Key{}, fmt.Errorf("parse %s host key: %w", t, err)
	}
	var priv crypto.Signer
	var got Type
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		priv, got = *k, ED25519
	case ed25519.PrivateKey:
		priv, got = k, ED25519
	case *ecdsa.PrivateKey:
		priv, got = k, ECDSA
	case *rsa.PrivateKey:
		priv, got = k, RSA
	default:
		return Key{}, fmt.Errorf("parse %s host key: unsupported key %T", t, raw)
	}
	if got != t {
		return Key{}, fmt.Errorf("parse %s host key: file holds a %s key", t, got)
	}
	return Key{Type: t, Private: priv, file: b}, nil
}

// Host is one known_hosts entry: the names and addresses a host answers
// to, and its keys.
type Host struct {
	// Names are the host's names and addresses, e.g. "n001",
	// "n001.cluster.local", "10.0.0.11".
	Names []string
	// Keys are the host's keys.
	Keys Keys
}

// WriteKnownHosts writes an ssh_known_hosts file for hosts: one line per
// key, "name,name,address type base64". Hosts without names are errors.
func WriteKnownHosts(w io.Writer, hosts []Host) error {
	var b []byte
	for _, h := range hosts {
		if len(h.Names) == 0 {
			return errors.New("known hosts: a host without names")
		}
		names := strings.Join(h.Names, ",")
		for _, k := range h.Keys {
			p, err := k.PublicKey()
			if err != nil {
				return fmt.Errorf("known hosts %s: %w", h.Names[0], err)
			}
			b = append(b, names...)
			b = append(b, ' ')
			b = append(b, ssh.MarshalAuthorizedKey(p)...)
		}
		if len(b) > 1<<16 {
			if _, err := w.Write(b); err != nil {
				return fmt.Errorf("write known hosts: %w", err)
			}
			b = b[:0]
		}
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write known hosts: %w", err)
	}
	return nil
}

// Store keeps nodes' host keys.
type Store interface {
	// Load returns a node's keys, or an error that wraps fs.ErrNotExist
	// when it has none.
	Load(ctx context.Context, node string) (Keys, error)
	// Create stores keys for the nodes of batch that have none, and
	// returns every node's keys as stored after the call: the ones given,
	// or the ones another writer stored first.
	Create(ctx context.Context, batch map[string]Keys) (map[string]Keys, error)
	// Delete removes a node's keys; a node without keys is not an error.
	Delete(ctx context.Context, node string) error
}

// Ensure returns the keys of every node, generating (with types; nil means
// DefaultTypes) and storing keys for the nodes that have none. A node's
// stored keys are returned as they are, even if types has changed since;
// Delete them to make new ones.
func Ensure(ctx context.Context, s Store, nodes []string, types []Type) (map[string]Keys, error) {
	out := make(map[string]Keys, len(nodes))
	batch := map[string]Keys{}
	for _, n := range nodes {
		if _, done := out[n]; done {
			continue
		}
		ks, err := s.Load(ctx, n)
		if err == nil {
			out[n] = ks
			continue
		}
		if !isNotExist(err) {
			return nil, err
		}
		if _, done := batch[n]; done {
			continue
		}
		if batch[n], err = Generate(types); err != nil {
			return nil, err
		}
	}
	if len(batch) == 0 {
		return out, nil
	}
	stored, err := s.Create(ctx, batch)
	if err != nil {
		return nil, err
	}
	for n := range batch {
		out[n] = stored[n]
	}
	return out, nil
}

// ParseKey reads a private key file of type t, as PrivateFile wrote it: for
// stores other than Dir (keys shared by several heads).
func ParseKey(t Type, b []byte) (Key, error) { return parseKey(t, b) }
