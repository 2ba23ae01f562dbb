package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/ramboot/ramboot/images"
)

// OCIMarker is a file that only the OCI-built test image has: its upper
// layer adds it and whites out etc/os-release.old of the lower one.
const OCIMarker = "etc/ramboot-oci"

// BuildOCIImage makes the test image's tree into an OCI image layout of
// two layers (the tree, then a layer with a whiteout and a new file) with
// go-containerregistry, and builds it with `ramboot image build oci:DIR`:
// the path a container image takes, end to end.
func (l *Lab) BuildOCIImage(ctx context.Context, name string) (images.Digest, error) {
	k, err := l.FetchKernel(ctx)
	if err != nil {
		return "", err
	}
	tree := filepath.Join(l.work, "rootfs-oci-"+name)
	_ = os.RemoveAll(tree)
	if err := MakeRootfs(k, tree); err != nil {
		return "", fmt.Errorf("make test rootfs: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc/os-release.old"), []byte("hidden by the upper layer\n"), 0o644); err != nil {
		return "", err
	}
	base, err := layerFromDir(tree)
	if err != nil {
		return "", err
	}
	upper, err := layerFromEntries(map[string]string{
		"etc/.wh.os-release.old": "",
		OCIMarker:                "built from an OCI image layout\n",
	})
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, base, upper)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(l.work, "oci-"+name)
	_ = os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return "", fmt.Errorf("write OCI layout: %w", err)
	}
	if err := p.AppendImage(img); err != nil {
		return "", fmt.Errorf("write OCI layout: %w", err)
	}
	l.logf("building image %s from the OCI layout %s (kernel %s)", name, dir, k.Version)
	out, err := l.CLI(ctx, "image", "build", "oci:"+dir, "--name", name, "-o", "json")
	if err != nil {
		return "", err
	}
	var res struct {
		Digest images.Digest `json:"digest"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Digest == "" {
		return "", fmt.Errorf("decode image build output %q: %v", out, err)
	}
	return res.Digest, nil
}

// layerFromDir makes an uncompressed tar layer of a directory tree:
// directories, regular files and symlinks, owned by root.
func layerFromDir(root string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name, h.Uid, h.Gid, h.Uname, h.Gname = filepath.ToSlash(rel), 0, 0, "", ""
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("tar %s: %w", root, err)
	}
	return layerOf(buf.Bytes())
}

func layerFromEntries(files map[string]string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		io.WriteString(tw, content)
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return layerOf(buf.Bytes())
}

func layerOf(b []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}
