package push

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// checkKey accepts a public key listed in the authorized_keys file.
func (s *Server) checkKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	keys, err := ReadAuthorizedKeys(s.AuthorizedKeysFile)
	if err != nil {
		s.log().Warn("sftp: cannot read authorized keys", "path", s.AuthorizedKeysFile, "err", err)
		return nil, errors.New("no authorized keys")
	}
	wire := key.Marshal()
	for _, k := range keys {
		if bytes.Equal(k.Marshal(), wire) {
			return &ssh.Permissions{Extensions: map[string]string{"pubkey-fp": ssh.FingerprintSHA256(key)}}, nil
		}
	}
	return nil, fmt.Errorf("key %s of %s@%s is not in %s", ssh.FingerprintSHA256(key), meta.User(), meta.RemoteAddr(), s.AuthorizedKeysFile)
}

// ReadAuthorizedKeys parses an authorized_keys file. A missing file has no
// keys; a line that is not a key is an error naming the file and line.
func ReadAuthorizedKeys(path string) ([]ssh.PublicKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []ssh.PublicKey
	for n, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// LoadOrCreateHostKey reads the OpenSSH private key at path, or, when
// there is none, generates an Ed25519 key and writes it there (mode 0600,
// the public key beside it as path.pub), so the head keeps its identity
// across restarts.
func LoadOrCreateHostKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("read host key %s: %w", path, err)
		}
		return s, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	blk, err := ssh.MarshalPrivateKey(priv, "ramboot sftp host key")
	if err != nil {
		return nil, fmt.Errorf("encode host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(blk), 0o600); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	pub := ssh.MarshalAuthorizedKey(signer.PublicKey())
	_ = os.WriteFile(path+".pub", pub, 0o644) // informative only
	return signer, nil
}

// ClientOptions says how a Client authenticates and checks the server.
type ClientOptions struct {
	// User is the SSH user name. Default "ramboot"; the server accepts
	// any name with an authorized key.
	User string
	// IdentityFiles are private keys to offer. Default: ~/.ssh/id_ed25519,
	// id_ecdsa and id_rsa, those that exist and are not encrypted; keys
	// in an ssh-agent ($SSH_AUTH_SOCK) are offered too.
	IdentityFiles []string
	// KnownHostsFile is where the server's host key must be. Default
	// ~/.ssh/known_hosts.
	KnownHostsFile string
	// AcceptNewHostKey trusts a server that KnownHostsFile does not list
	// yet and adds it there (ssh's StrictHostKeyChecking=accept-new); a
	// changed key is refused all the same.
	AcceptNewHostKey bool
}

// ClientConfig builds the SSH client configuration for opt.
func ClientConfig(opt ClientOptions) (*ssh.ClientConfig, error) {
	home, _ := os.UserHomeDir()
	user := opt.User
	if user == "" {
		user = "ramboot"
	}
	var signers []ssh.Signer
	files := opt.IdentityFiles
	explicit := len(files) > 0
	if !explicit {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(home, ".ssh", n))
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if explicit {
				return nil, fmt.Errorf("read identity: %w", err)
			}
			continue
		}
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			var pp *ssh.PassphraseMissingError
			if explicit && !errors.As(err, &pp) {
				return nil, fmt.Errorf("read identity %s: %w", f, err)
			}
			continue // encrypted: the agent may hold it
		}
		signers = append(signers, s)
	}
	auths := []ssh.AuthMethod{}
	if len(signers) > 0 {
		auths = append(auths, ssh.PublicKeys(signers...))
	}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if c, err := net.Dial("unix", sock); err == nil {
			auths = append(auths, ssh.PublicKeysCallback(agent.NewClient(c).Signers))
		}
	}
	if len(auths) == 0 {
		return nil, errors.New("no SSH key: give one with --identity, create ~/.ssh/id_ed25519, or load one into ssh-agent")
	}
	known := opt.KnownHostsFile
	if known == "" {
		known = filepath.Join(home, ".ssh", "known_hosts")
	}
	hk, err := hostKeyCallback(known, opt.AcceptNewHostKey)
	if err != nil {
		return nil, err
	}
	return &ssh.ClientConfig{User: user, Auth: auths, HostKeyCallback: hk}, nil
}

// hostKeyCallback checks host keys against the known_hosts file, and with
// acceptNew adds the key of a host the file does not know.
func hostKeyCallback(file string, acceptNew bool) (ssh.HostKeyCallback, error) {
	if _, err := os.Stat(file); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			return nil, fmt.Errorf("create %s: %w", file, err)
		}
	}
	check, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("read known hosts: %w", err)
	}
	return func(host string, remote net.Addr, key ssh.PublicKey) error {
		err := check(host, remote, key)
		var ke *knownhosts.KeyError
		if err == nil || !errors.As(err, &ke) {
			return err
		}
		if len(ke.Want) > 0 {
			return fmt.Errorf("host key of %s changed (now %s; %s says otherwise): refusing", host, ssh.FingerprintSHA256(key), file)
		}
		if !acceptNew {
			return fmt.Errorf("host %s is not in %s (its key is %s; check it against the head's state_dir/sftp_host_ed25519_key.pub, then rerun with --accept-new-host-key)",
				host, file, ssh.FingerprintSHA256(key))
		}
		f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(knownhosts.Line([]string{knownhosts.Normalize(host)}, key) + "\n")
		return err
	}, nil
}
