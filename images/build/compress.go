package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// windowFor returns the zstd window for an archive of about size bytes at
// levels 3 and up. The encoder's parallel jobs are four windows long, and
// a 64 MiB archive cut in 32 MiB jobs (the 8 MiB default window) keeps two
// cores busy only half the time: below 256 MiB the window is 2 MiB (C
// zstd's at level 3), which makes eight jobs of a 64 MiB archive; above,
// the default 8 MiB window compresses better (docs/benchmarks.md). The
// size is a function of the tree, so builds stay reproducible.
func windowFor(size int64) int {
	if size < 256<<20 {
		return 2 << 20
	}
	return 8 << 20
}

// encoderConcurrency returns the number of zstd compression jobs to run at
// once. With concurrent blocks the encoder cuts the stream into jobs whose
// size depends only on the level, so its output is the same for any
// concurrency above 1; below 2 it would switch to another mode, so the
// floor is 2 whatever GOMAXPROCS says, and the compressed bytes do not
// depend on the machine. The cap bounds memory: each worker adds a few
// jobs in flight.
func encoderConcurrency() int {
	return max(2, min(4, runtime.GOMAXPROCS(0)))
}

// compressor returns the writer that compresses an archive of about size
// bytes into w.
func (b *builder) compressor(ctx context.Context, w io.Writer, size int64) (io.WriteCloser, error) {
	if b.opt.Compression == Gzip {
		zw, err := gzip.NewWriterLevel(w, b.level)
		if err != nil {
			return nil, fmt.Errorf("start gzip: %w", err)
		}
		return zw, nil
	}
	if b.zstdCmd != "" {
		return startZstd(ctx, b.zstdCmd, b.level, w)
	}
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(b.level)),
		zstd.WithEncoderConcurrency(encoderConcurrency()),
		zstd.WithConcurrentBlocks(true),
	}
	if b.level >= 3 {
		opts = append(opts, zstd.WithWindowSize(windowFor(size)))
	}
	zw, err := zstd.NewWriter(w, opts...)
	if err != nil {
		return nil, fmt.Errorf("start zstd encoder: %w", err)
	}
	return zw, nil
}

// pickCompressor settles Options.Compressor.
func (b *builder) pickCompressor() error {
	if b.opt.Compression == Gzip {
		return nil
	}
	switch b.opt.Compressor {
	case "go":
		return nil
	case "", "zstd":
		p, err := exec.LookPath("zstd")
		if err != nil {
			if b.opt.Compressor == "zstd" {
				return fmt.Errorf("compressor zstd: %w", err)
			}
			return nil
		}
		v, err := zstdVersion(p)
		if err != nil {
			if b.opt.Compressor == "zstd" {
				return err
			}
			return nil
		}
		b.zstdCmd, b.zstdVer = p, v
		return nil
	}
	return fmt.Errorf("compressor %q: want zstd or go", b.opt.Compressor)
}

var zstdVersions sync.Map // path -> version

// zstdVersion returns the version the zstd program prints, e.g. "v1.5.4".
func zstdVersion(path string) (string, error) {
	if v, ok := zstdVersions.Load(path); ok {
		return v.(string), nil
	}
	out, err := exec.Command(path, "-V").Output()
	if err != nil {
		return "", fmt.Errorf("%s -V: %w", path, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "v") && strings.Count(f, ".") >= 2 {
			v := strings.TrimSuffix(f, ",")
			zstdVersions.Store(path, v)
			return v, nil
		}
	}
	return "", fmt.Errorf("%s -V: no version in %q", path, out)
}

// builderName is the manifest's builder: Builder and the compressor.
func (b *builder) builderName() string {
	switch {
	case b.opt.Compression == Gzip:
		return Builder() + " (gzip)"
	case b.zstdCmd != "":
		return Builder() + " (zstd " + b.zstdVer + ")"
	}
	return Builder() + " (go zstd)"
}

// zstdProc compresses with the zstd program: what is written goes to its
// standard input, its output to w.
type zstdProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	closed bool
	err    error
}

func startZstd(ctx context.Context, path string, level int, w io.Writer) (*zstdProc, error) {
	args := []string{"-q", "-c", "-T0", "-" + strconv.Itoa(level)}
	if level > 19 {
		args = append([]string{"--ultra"}, args...)
	}
	z := &zstdProc{cmd: exec.CommandContext(ctx, path, args...)}
	z.cmd.Stdout = w
	z.cmd.Stderr = &z.stderr
	in, err := z.cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start zstd: %w", err)
	}
	z.stdin = in
	if err := z.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start zstd: %w", err)
	}
	return z, nil
}

func (z *zstdProc) Write(p []byte) (int, error) {
	n, err := z.stdin.Write(p)
	if err != nil {
		return n, fmt.Errorf("zstd: %w", err)
	}
	return n, nil
}

// Close ends the input and waits for zstd to finish.
func (z *zstdProc) Close() error {
	if z.closed {
		return z.err
	}
	z.closed = true
	z.stdin.Close()
	if err := z.cmd.Wait(); err != nil {
		z.err = fmt.Errorf("zstd: %w: %s", err, bytes.TrimSpace(z.stderr.Bytes()))
		if errors.Is(err, context.Canceled) {
			z.err = err
		}
	}
	return z.err
}
