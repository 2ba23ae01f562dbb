package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync/atomic"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/ramboot/ramboot/images"
)

// maxPacket is the SFTP data size per request: pkg/sftp's server takes
// messages up to 256 KiB, headers included.
const maxPacket = 255 << 10

// Client pushes images to and pulls them from a Server.
type Client struct {
	conn *ssh.Client
	sftp *sftp.Client
}

// Dial connects to the server at addr ("host:port") with cfg (see
// ClientConfig).
func Dial(ctx context.Context, addr string, cfg *ssh.ClientConfig) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("ssh to %s: %w", addr, err)
	}
	conn := ssh.NewClient(sc, chans, reqs)
	c, err := sftp.NewClient(conn,
		sftp.UseConcurrentWrites(true),
		sftp.UseConcurrentReads(true),
		sftp.MaxConcurrentRequestsPerFile(64),
		// Both ends are pkg/sftp, which takes packets up to 256 KiB:
		// fewer, larger packets cost less per byte than OpenSSH's 32 KiB.
		sftp.MaxPacketUnchecked(maxPacket),
	)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start sftp on %s: %w", addr, err)
	}
	return &Client{conn: conn, sftp: c}, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	c.sftp.Close()
	return c.conn.Close()
}

// Progress reports a transfer: Blob is "kernel", "rootfs" or "manifest".
type Progress struct {
	Blob   string
	Digest images.Digest
	// Bytes of Total sent or received so far; Skipped when the other side
	// has the blob already.
	Bytes, Total int64
	Skipped      bool
	Done         bool
}

// Result says what a push or pull moved.
type Result struct {
	// Ref is the reference committed on the receiving side.
	Ref string `json:"ref"`
	// Digest is the manifest's digest.
	Digest images.Digest `json:"digest"`
	// Blobs counts the blobs transferred, Skipped those the other side had.
	Blobs   int `json:"blobs"`
	Skipped int `json:"skipped"`
	// Bytes counts the bytes transferred (blobs and manifest).
	Bytes int64 `json:"bytes"`
	// Unchanged is true when the reference already pointed to the
	// manifest, so nothing was committed.
	Unchanged bool `json:"unchanged"`
}

// Push sends the image ref resolves to in st, committing it on the server
// as dst (ref when empty): the blobs the server lacks, then the manifest,
// unless the server's dst already points to it.
func (c *Client) Push(ctx context.Context, st *images.Store, ref, dst string, progress func(Progress)) (Result, error) {
	if dst == "" {
		dst = ref
	}
	r, err := images.ParseReference(dst)
	if err != nil {
		return Result{}, fmt.Errorf("push %s: %w", ref, err)
	}
	m, d, err := st.Resolve(ref)
	if err != nil {
		return Result{}, fmt.Errorf("push: %w", err)
	}
	res := Result{Ref: r.String(), Digest: d}
	mb, err := st.ManifestBytes(d)
	if err != nil {
		return res, fmt.Errorf("push %s: %w", ref, err)
	}
	for _, a := range m.Artifacts() {
		b := struct {
			name string
			a    images.Artifact
		}{images.ArtifactName(a), a}
		if fi, err := c.sftp.Stat(BlobPath(b.a.Digest)); err == nil && fi.Size() == b.a.Size {
			res.Skipped++
			report(progress, Progress{Blob: b.name, Digest: b.a.Digest, Total: b.a.Size, Skipped: true, Done: true})
			continue
		}
		n, err := c.upload(ctx, st, b.name, b.a, progress)
		res.Bytes += n
		if err != nil {
			return res, fmt.Errorf("push %s: %s %s: %w", ref, b.name, b.a.Digest, err)
		}
		res.Blobs++
	}
	if cur, err := c.readSmall(RefPath(r.String())); err == nil && strings.TrimSpace(string(cur)) == string(d) {
		res.Unchanged = true
		report(progress, Progress{Blob: "manifest", Digest: d, Total: int64(len(mb)), Skipped: true, Done: true})
		return res, nil
	}
	if err := c.writeSmall(ctx, ManifestPath(r.String()), mb); err != nil {
		return res, fmt.Errorf("push %s: commit manifest %s as %s: %w", ref, d, r, err)
	}
	res.Bytes += int64(len(mb))
	report(progress, Progress{Blob: "manifest", Digest: d, Bytes: int64(len(mb)), Total: int64(len(mb)), Done: true})
	return res, nil
}

func report(fn func(Progress), p Progress) {
	if fn != nil {
		fn(p)
	}
}

// upload sends one blob; the server verifies it when the file is closed.
func (c *Client) upload(ctx context.Context, st *images.Store, name string, a images.Artifact, progress func(Progress)) (int64, error) {
	src, err := st.OpenBlob(a.Digest)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	f, err := c.sftp.OpenFile(BlobPath(a.Digest), os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	defer stop()
	cr := &countReader{r: src, fn: func(n int64) {
		report(progress, Progress{Blob: name, Digest: a.Digest, Bytes: n, Total: a.Size})
	}}
	n, err := f.ReadFromWithConcurrency(cr, 64)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if ctx.Err() != nil {
		return n, ctx.Err()
	}
	if err != nil {
		return n, err
	}
	report(progress, Progress{Blob: name, Digest: a.Digest, Bytes: n, Total: a.Size, Done: true})
	return n, nil
}

// countReader reports the bytes read so far.
type countReader struct {
	r  io.Reader
	n  atomic.Int64
	fn func(int64)
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.fn(c.n.Add(int64(n)))
	return n, err
}

func (c *Client) readSmall(p string) ([]byte, error) {
	f, err := c.sftp.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20+1))
}

func (c *Client) writeSmall(ctx context.Context, p string, b []byte) error {
	f, err := c.sftp.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close() // the server commits here, and reports why it did not
}

// Pull fetches the image ref from the server into st, committed as dst
// (ref when empty): the blobs st lacks, each verified as it is stored,
// then the manifest.
func (c *Client) Pull(ctx context.Context, st *images.Store, ref, dst string, progress func(Progress)) (Result, error) {
	if dst == "" {
		dst = ref
	}
	r, err := images.ParseReference(ref)
	if err != nil {
		return Result{}, fmt.Errorf("pull: %w", err)
	}
	dr, err := images.ParseReference(dst)
	if err != nil {
		return Result{}, fmt.Errorf("pull: %w", err)
	}
	b, err := c.readSmall(RefPath(r.String()))
	if errors.Is(err, fs.ErrNotExist) {
		return Result{}, fmt.Errorf("pull %s: %w", r, images.ErrNotFound)
	}
	if err != nil {
		return Result{}, fmt.Errorf("pull %s: %w", r, err)
	}
	d, err := images.ParseDigest(strings.TrimSpace(string(b)))
	if err != nil {
		return Result{}, fmt.Errorf("pull %s: %w", r, err)
	}
	res := Result{Ref: dr.String(), Digest: d}
	mb, err := c.readSmall(BlobPath(d))
	if err != nil {
		return res, fmt.Errorf("pull %s: manifest %s: %w", r, d, err)
	}
	if images.DigestOf(mb) != d {
		return res, fmt.Errorf("pull %s: manifest %s: %w", r, d, images.ErrDigestMismatch)
	}
	m, err := images.ParseManifest(mb)
	if err != nil {
		return res, fmt.Errorf("pull %s: %w", r, err)
	}
	for _, a := range m.Artifacts() {
		bl := struct {
			name string
			a    images.Artifact
		}{images.ArtifactName(a), a}
		if st.HasBlob(bl.a) {
			res.Skipped++
			report(progress, Progress{Blob: bl.name, Digest: bl.a.Digest, Total: bl.a.Size, Skipped: true, Done: true})
			continue
		}
		n, err := c.download(ctx, st, bl.name, bl.a, progress)
		res.Bytes += n
		if err != nil {
			return res, fmt.Errorf("pull %s: %s %s: %w", r, bl.name, bl.a.Digest, err)
		}
		res.Blobs++
	}
	res.Bytes += int64(len(mb))
	if _, cur, err := st.Resolve(dr.String()); err == nil && cur == d {
		res.Unchanged = true
		return res, nil
	}
	if _, err := st.CommitManifest(dr.String(), mb); err != nil {
		return res, fmt.Errorf("pull %s: %w", r, err)
	}
	return res, nil
}

func (c *Client) download(ctx context.Context, st *images.Store, name string, a images.Artifact, progress func(Progress)) (int64, error) {
	f, err := c.sftp.Open(BlobPath(a.Digest))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cr := &countReader{r: f, fn: func(n int64) {
		report(progress, Progress{Blob: name, Digest: a.Digest, Bytes: n, Total: a.Size})
	}}
	_, err = st.PutVerified(ctx, cr, a)
	n := cr.n.Load()
	if err != nil {
		return n, err
	}
	report(progress, Progress{Blob: name, Digest: a.Digest, Bytes: n, Total: a.Size, Done: true})
	return n, nil
}
