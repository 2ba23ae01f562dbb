package source

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// refNameAnnotation names an image in an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// platform is the platform images are selected for: linux on the
// builder's architecture (the head builds for its own kind of nodes).
var platform = v1.Platform{OS: "linux", Architecture: runtime.GOARCH}

// OCILayout is an OCI image layout directory.
type OCILayout struct {
	// Path is the layout's directory (it holds oci-layout and index.json).
	Path string
	// Tag, when set, selects the image whose ref.name annotation is Tag;
	// else the layout must hold one image for this platform.
	Tag string
}

// String returns "oci:PATH[:TAG]".
func (o *OCILayout) String() string {
	if o.Tag != "" {
		return "oci:" + o.Path + ":" + o.Tag
	}
	return "oci:" + o.Path
}

// Open flattens the layout's image.
func (o *OCILayout) Open(ctx context.Context, opt Options) (*Tree, error) {
	img, err := layoutImage(o.Path, o.Tag)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", o, err)
	}
	abs, _ := filepath.Abs(o.Path)
	return openImage(ctx, "oci:"+abs, img, opt)
}

func layoutImage(dir, tag string) (v1.Image, error) {
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return nil, fmt.Errorf("not an OCI image layout: %w", err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read OCI layout: %w", err)
	}
	return selectImage(idx, tag)
}

// selectImage finds the image of idx for platform, by tag if one is
// given, descending into nested indexes (multi-platform images).
func selectImage(idx v1.ImageIndex, tag string) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read image index: %w", err)
	}
	var found []v1.Descriptor
	var names []string
	for _, d := range im.Manifests {
		ref := d.Annotations[refNameAnnotation]
		if ref != "" {
			names = append(names, ref)
		}
		if tag != "" && ref != tag {
			continue
		}
		if d.Platform != nil && (d.Platform.OS != platform.OS || d.Platform.Architecture != platform.Architecture) {
			continue
		}
		found = append(found, d)
	}
	switch {
	case len(found) == 0 && tag != "":
		return nil, fmt.Errorf("no image named %q for %s/%s (names: %s)", tag, platform.OS, platform.Architecture, strings.Join(names, ", "))
	case len(found) == 0:
		return nil, fmt.Errorf("no image for %s/%s", platform.OS, platform.Architecture)
	case len(found) > 1:
		return nil, fmt.Errorf("%d images for %s/%s: name one with :TAG (names: %s)", len(found), platform.OS, platform.Architecture, strings.Join(names, ", "))
	}
	d := found[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("read image index %s: %w", d.Digest, err)
		}
		return selectImage(child, "")
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", d.Digest, err)
	}
	return img, nil
}

// Archive is a tarball of an image: a docker-archive (`docker save`) or an
// OCI archive (a tarball of an OCI image layout).
type Archive struct {
	// Path is the tarball.
	Path string
	// Tag selects an image of an OCI archive by its ref.name annotation.
	Tag string

	kind string // "docker-archive", "oci-archive", or "" to detect
}

// String returns "docker-archive:PATH" or "oci-archive:PATH".
func (a *Archive) String() string {
	k := a.kind
	if k == "" {
		k = "archive"
	}
	return k + ":" + a.Path
}

// Open flattens the archive's image.
func (a *Archive) Open(ctx context.Context, opt Options) (*Tree, error) {
	abs, _ := filepath.Abs(a.Path)
	kind := a.kind
	if kind == "" {
		k, err := detectArchive(a.Path)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", a.Path, err)
		}
		kind = k
	}
	switch kind {
	case "docker-archive":
		img, err := tarball.ImageFromPath(a.Path, nil)
		if err != nil {
			return nil, fmt.Errorf("source docker-archive:%s: %w", a.Path, err)
		}
		return openImage(ctx, "docker-archive:"+abs, img, opt)
	default:
		dir, err := os.MkdirTemp(opt.TmpDir, "oci-archive-*")
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", a.Path, err)
		}
		defer os.RemoveAll(dir)
		if err := untarLayout(ctx, a.Path, dir); err != nil {
			return nil, fmt.Errorf("source oci-archive:%s: %w", a.Path, err)
		}
		img, err := layoutImage(dir, a.Tag)
		if err != nil {
			return nil, fmt.Errorf("source oci-archive:%s: %w", a.Path, err)
		}
		// openImage reads every layer before it returns, so the
		// unpacked layout can go.
		return openImage(ctx, "oci-archive:"+abs, img, opt)
	}
}

// detectArchive tells a docker-archive (manifest.json) from an OCI
// archive (oci-layout) by their top-level files.
func detectArchive(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", errors.New("not a docker-archive or OCI archive: no manifest.json and no oci-layout at its top")
		}
		if err != nil {
			return "", fmt.Errorf("not a tarball: %w", err)
		}
		switch strings.TrimPrefix(h.Name, "./") {
		case "oci-layout":
			return "oci-archive", nil
		case "manifest.json":
			return "docker-archive", nil
		}
	}
}

// untarLayout unpacks the regular files and directories of an OCI archive
// into dir, refusing names that leave it.
func untarLayout(ctx context.Context, path, dir string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tarball: %w", err)
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("unpack %s: %w", name, err)
			}
		default:
			return fmt.Errorf("entry %q: an OCI archive holds only files and directories", h.Name)
		}
	}
}

// Registry is an image in a registry.
type Registry struct {
	// Ref is the image reference, e.g. "docker.io/library/debian:12" or
	// "registry.example.org/hpc/rocky9@sha256:...".
	Ref string
}

// String returns "docker://REF".
func (r *Registry) String() string { return "docker://" + r.Ref }

// Open pulls the image's layers (credentials from the Docker config, as
// `docker login` writes them) and flattens it. A multi-platform image
// resolves to linux on the builder's architecture.
func (r *Registry) Open(ctx context.Context, opt Options) (*Tree, error) {
	var nopt []name.Option
	ropt := []remote.Option{remote.WithContext(ctx), remote.WithPlatform(platform), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	if opt.Insecure {
		nopt = append(nopt, name.Insecure)
	}
	ref, err := name.ParseReference(r.Ref, nopt...)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", r, err)
	}
	img, err := remote.Image(ref, ropt...)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", r, err)
	}
	return openImage(ctx, "docker://"+ref.Context().Name(), img, opt)
}

// openImage flattens img; source is completed with the image's digest.
func openImage(ctx context.Context, source string, img v1.Image, opt Options) (*Tree, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("source %s: image digest: %w", source, err)
	}
	source += "@" + d.String()
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", source, err)
	}
	t, err := flatten(ctx, layers, opt)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", source, err)
	}
	t.Source = source
	t.CacheKey = d.String()
	return t, nil
}

// Image is a container image already at hand as go-containerregistry's
// v1.Image (built or fetched by the caller).
type Image struct {
	// Image is the image.
	Image v1.Image
	// Name describes it in the manifest's source, e.g. "ci:rocky9".
	Name string
}

// String returns Name.
func (i *Image) String() string { return i.Name }

// Open flattens the image.
func (i *Image) Open(ctx context.Context, opt Options) (*Tree, error) {
	return openImage(ctx, i.Name, i.Image, opt)
}
