package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/images/push"
)

// remoteFlags are the flags push and pull share.
type remoteFlags struct {
	as    string
	quiet bool
	opt   push.ClientOptions
}

func (f *remoteFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.as, "as", "", "reference to commit on the receiving side (default: the same)")
	fl.StringArrayVarP(&f.opt.IdentityFiles, "identity", "i", nil, "SSH private key (default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa and ssh-agent)")
	fl.StringVar(&f.opt.KnownHostsFile, "known-hosts", "", "known_hosts file the head's host key is checked against (default ~/.ssh/known_hosts)")
	fl.BoolVar(&f.opt.AcceptNewHostKey, "accept-new-host-key", false, "trust a head not yet in known_hosts and add it (a changed key is still refused)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress output")
}

// parseHead splits [user@]host[:port], the port defaulting to 2222.
func parseHead(s string) (user, addr string, err error) {
	if u, rest, ok := strings.Cut(s, "@"); ok {
		user, s = u, rest
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		host, port = strings.Trim(s, "[]"), strconv.Itoa(push.DefaultPort)
	}
	if host == "" {
		return "", "", fmt.Errorf("head %q: want [USER@]HOST[:PORT]", s)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", "", fmt.Errorf("head %q: bad port %q", s, port)
	}
	return user, net.JoinHostPort(host, port), nil
}

func (g *globals) pushClient(cmd *cobra.Command, head string, f *remoteFlags) (*push.Client, error) {
	user, addr, err := parseHead(head)
	if err != nil {
		return nil, err
	}
	f.opt.User = user
	cfg, err := push.ClientConfig(f.opt)
	if err != nil {
		return nil, err
	}
	return push.Dial(cmd.Context(), addr, cfg)
}

func (g *globals) printTransfer(verb string, r push.Result) error {
	if g.output == "json" {
		return g.printJSON(r)
	}
	state := "committed"
	if r.Unchanged {
		state = "already there"
	}
	_, err := fmt.Fprintf(g.stdout, "%s %s %s: %d blobs sent, %d already there, %d bytes, %s\n", verb, r.Ref, r.Digest, r.Blobs, r.Skipped, r.Bytes, state)
	return err
}

func imagePushCmd(g *globals) *cobra.Command {
	var to string
	var f remoteFlags
	c := &cobra.Command{
		Use:   "push NAME[:TAG] --to [USER@]HEAD[:PORT]",
		Short: "Upload an image to a head over SFTP: only the blobs it lacks, then the manifest",
		Long: `push sends an image from the local store (--state-dir) to a head's SFTP
endpoint (` + "`ramboot serve`" + `, port 2222 by default), authenticating with an SSH key the
head lists in its authorized_keys. The head verifies every blob's digest
before the reference appears; pushing an image the head has sends nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.pushClient(cmd, to, &f)
			if err != nil {
				return err
			}
			defer c.Close()
			pr := newTransferProgress(g, g.progressMode(f.quiet || g.output == "json"), "push")
			res, err := c.Push(cmd.Context(), g.store(), args[0], f.as, pr.update)
			pr.close()
			if err != nil {
				return err
			}
			return g.printTransfer("pushed", res)
		},
	}
	c.Flags().StringVar(&to, "to", "", "the head, [USER@]HOST[:PORT] (required)")
	_ = c.MarkFlagRequired("to")
	f.add(c)
	return c
}

func imagePullCmd(g *globals) *cobra.Command {
	var from string
	var f remoteFlags
	c := &cobra.Command{
		Use:   "pull NAME[:TAG] --from [USER@]HEAD[:PORT]",
		Short: "Download an image from a head over SFTP into the local store",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.pushClient(cmd, from, &f)
			if err != nil {
				return err
			}
			defer c.Close()
			pr := newTransferProgress(g, g.progressMode(f.quiet || g.output == "json"), "pull")
			res, err := c.Pull(cmd.Context(), g.store(), args[0], f.as, pr.update)
			pr.close()
			if err != nil {
				return err
			}
			return g.printTransfer("pulled", res)
		},
	}
	c.Flags().StringVar(&from, "from", "", "the head, [USER@]HOST[:PORT] (required)")
	_ = c.MarkFlagRequired("from")
	f.add(c)
	return c
}
