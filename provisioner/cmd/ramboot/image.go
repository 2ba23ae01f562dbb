package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/source"
	"github.com/ramboot/ramboot/provisioner"
	"github.com/ramboot/ramboot/provisioner/api"
	"github.com/ramboot/ramboot/provisioner/apiclient"
)

func imageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Build, list, tag, remove, collect, export, push and pull node images",
		Long: `image manages the image store under --state-dir (created on first use).
Commands that change the head's references or remove blobs (tag, rm, gc) go
through the daemon's admin API when ` + "`ramboot serve`" + ` runs on this state
directory, so it can refuse what nodes still use; build and pull add blobs
and a reference directly, which the store makes safe beside a daemon.`,
	}
	c.AddCommand(imageBuildCmd(g), imageListCmd(g), imageShowCmd(g), imageTagCmd(g), imageRmCmd(g),
		imageGCCmd(g), imageExportCmd(g), imagePushCmd(g), imagePullCmd(g))
	return c
}

func (g *globals) store() *images.Store {
	return &images.Store{Dir: filepath.Join(g.stateDir, provisioner.ImagesDir)}
}

// daemon returns a client of the daemon serving --state-dir, or nil when
// none answers on its socket.
func (g *globals) daemon(ctx context.Context) *apiclient.Client {
	sock := filepath.Join(g.stateDir, provisioner.SocketFile)
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(dctx, "unix", sock)
	if err != nil {
		return nil
	}
	c.Close()
	return g.client()
}

// imageResult is what `image build -o json` prints.
type imageResult struct {
	Name     string          `json:"name"`
	Tag      string          `json:"tag"`
	Ref      string          `json:"ref"`
	Digest   images.Digest   `json:"digest"`
	Manifest images.Manifest `json:"manifest"`
	Cached   bool            `json:"cached,omitempty"`
}

func imageBuildCmd(g *globals) *cobra.Command {
	var opt build.Options
	var gz, quiet bool
	c := &cobra.Command{
		Use:   "build SOURCE --name NAME[:TAG]",
		Short: "Build a node image from a root tree, an OCI layout or archive, or a registry image",
		Long: `build archives SOURCE as a reproducible newc cpio compressed with zstd (or
gzip), takes the kernel from the tree's /boot/vmlinuz-* (or --kernel), and
commits both with a manifest to the image store as NAME[:TAG] (a bare name
is NAME:latest). SOURCE is a directory (chroot, debootstrap output), an OCI
image layout, a docker-archive or OCI archive tarball, or docker://REF; see
docs/images.md. A rebuild of an unchanged source commits nothing. Progress
goes to stderr (bars on a terminal, -q for none).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, err := source.Parse(args[0])
			if err != nil {
				return err
			}
			opt.Source = src
			opt.Store = g.store()
			if gz {
				opt.Compression = build.Gzip
			}
			pr := newBuildProgress(g, g.progressMode(quiet || g.output == "json"), opt.Name)
			defer pr.close()
			cached := false
			opt.Progress = func(p build.Progress) {
				cached = cached || p.Phase == build.PhaseCached
				pr.update(p)
			}
			m, d, err := build.Build(cmd.Context(), opt)
			if err != nil {
				return err
			}
			pr.close()
			res := imageResult{Name: m.Name, Tag: m.Tag, Ref: m.Name + ":" + m.Tag, Digest: d, Manifest: m, Cached: cached}
			if g.output == "json" {
				return g.printJSON(res)
			}
			return printManifest(g.stdout, res.Ref, d, m)
		},
	}
	f := c.Flags()
	f.StringVar(&opt.Name, "name", "", "image reference NAME[:TAG] (required)")
	f.StringVar(&opt.Kernel, "kernel", "", "kernel file on this host (default: the newest /boot/vmlinuz-* of the source)")
	f.IntVar(&opt.Level, "level", 0, "compression level: zstd 1-22 (default 3), gzip 1-9 (default 6)")
	f.BoolVar(&gz, "gzip", false, "compress with gzip, for kernels older than 5.9 (no zstd initramfs)")
	f.StringVar(&opt.Compressor, "compressor", "", "zstd compressor: zstd (the program) or go (built in); default: the program if installed")
	f.StringArrayVar(&opt.Excludes, "exclude", nil, "leave out entries matching this pattern (repeatable; see docs/images.md)")
	f.BoolVar(&opt.NoDefaultExcludes, "no-default-excludes", false, "keep temporary files, package caches and other kernels' files")
	f.BoolVar(&opt.NoCache, "no-cache", false, "build even if the source is unchanged since the last build")
	f.BoolVar(&opt.NoCompressedRoot, "no-compressed-root", false, "skip the squashfs image for the compressed root mode (needs tar2sqfs)")
	f.IntVar(&opt.SquashfsLevel, "squashfs-level", 0, "zstd level of the compressed root's squashfs, 1-22 (default 9)")
	f.BoolVar(&opt.CrossFilesystems, "cross-filesystems", false, "include file systems mounted inside a directory source")
	f.BoolVar(&opt.Insecure, "insecure-registry", false, "allow plain HTTP and unverified TLS for docker:// sources")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	_ = c.MarkFlagRequired("name")
	return c
}

// printManifest prints an image for a person.
func printManifest(w io.Writer, ref string, d images.Digest, m images.Manifest) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Image:\t%s\n", ref)
	fmt.Fprintf(tw, "Digest:\t%s\n", d)
	fmt.Fprintf(tw, "Built as:\t%s:%s, %s by %s\n", m.Name, orDash(m.Tag), m.Created.Local().Format(time.DateTime), orDash(m.Builder))
	fmt.Fprintf(tw, "Source:\t%s\n", m.Source)
	fmt.Fprintf(tw, "Kernel:\t%s\t%s\t%s\n", orDash(m.KernelVersion), m.Kernel.Digest, mib(m.Kernel.Size))
	fmt.Fprintf(tw, "Root fs:\t%s\t%s\t%s (%s uncompressed, %d files)\n", strings.TrimPrefix(m.Rootfs.MediaType, "application/vnd.ramboot.rootfs."),
		m.Rootfs.Digest, mib(m.Rootfs.Size), mib(m.RootfsUncompressedSize), m.Files)
	if c := m.CompressedRoot; c != nil {
		fmt.Fprintf(tw, "Compressed root:\t%s\t%s\t%s\n", strings.TrimPrefix(c.MediaType, "application/vnd.ramboot.rootfs."), c.Digest, mib(c.Size))
	}
	fmt.Fprintf(tw, "Size:\t%s in %d blobs\n", mib(m.Size()), len(m.Artifacts()))
	fmt.Fprintf(tw, "Content:\t%s\n", m.ContentDigest)
	if len(m.Excludes) > 0 {
		fmt.Fprintf(tw, "Excluded:\t%s\n", strings.Join(m.Excludes, " "))
	}
	return tw.Flush()
}

func imageListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the image references in the store",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			refs, err := g.store().List()
			if err != nil {
				return err
			}
			if g.output == "json" {
				out := make([]api.Image, 0, len(refs))
				for _, r := range refs {
					out = append(out, api.Image{Name: r.Name, Tag: r.Tag, Ref: r.Reference(), Digest: string(r.Digest), Manifest: r.Manifest})
				}
				return g.printJSON(out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTAG\tDIGEST\tKERNEL\tSIZE\tCREATED")
			for _, r := range refs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Tag, r.Digest.Hex()[:12], orDash(r.Manifest.KernelVersion),
					mib(r.Manifest.Size()), r.Manifest.Created.Local().Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
}

// fileEntry is one line of `image show --files`.
type fileEntry struct {
	Name     string `json:"name"`
	Mode     string `json:"mode"`
	UID      int    `json:"uid"`
	GID      int    `json:"gid"`
	Size     int64  `json:"size"`
	Links    int    `json:"links"`
	Linkname string `json:"linkname,omitempty"`
}

func imageShowCmd(g *globals) *cobra.Command {
	var files bool
	c := &cobra.Command{
		Use:   "show NAME[:TAG]|DIGEST",
		Short: "Show an image: manifest, sizes, kernel, the nodes assigned it; --files lists its archive",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st := g.store()
			m, d, err := st.Resolve(args[0])
			if err != nil {
				return err
			}
			var nodes []string
			if r, err := images.ParseReference(args[0]); err == nil {
				if c := g.daemon(cmd.Context()); c != nil {
					if img, err := c.GetImage(cmd.Context(), r.String()); err == nil {
						nodes = img.Nodes
					}
				} else if use, err := provisioner.OfflineImageUse(cmd.Context(), g.stateDir, ""); err == nil {
					nodes = use.Assigned(r)
					use.Close()
				}
			}
			if files {
				es, err := listArchive(st, m.Rootfs)
				if err != nil {
					return err
				}
				if g.output == "json" {
					return g.printJSON(es)
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 0, 1, ' ', tabwriter.AlignRight)
				for _, e := range es {
					name := e.Name
					if e.Linkname != "" {
						name += " -> " + e.Linkname
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t %s\n", e.Mode, e.Links, e.UID, e.GID, e.Size, name)
				}
				return tw.Flush()
			}
			if g.output == "json" {
				return g.printJSON(api.Image{Name: m.Name, Tag: m.Tag, Ref: args[0], Digest: string(d), Manifest: m, Nodes: nodes})
			}
			if err := printManifest(g.stdout, args[0], d, m); err != nil {
				return err
			}
			_, err = fmt.Fprintf(g.stdout, "Nodes:     %s\n", orDash(strings.Join(nodes, " ")))
			return err
		},
	}
	c.Flags().BoolVar(&files, "files", false, "list the root file system's archive, read back from the store")
	return c
}

// listArchive reads a rootfs blob back and lists its entries.
func listArchive(st *images.Store, a images.Artifact) ([]fileEntry, error) {
	f, err := st.OpenBlob(a.Digest)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader
	if a.MediaType == images.MediaTypeRootfsGzip {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("read rootfs %s: %w", a.Digest, err)
		}
		r = zr
	} else {
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("read rootfs %s: %w", a.Digest, err)
		}
		defer zr.Close()
		r = zr
	}
	cr := cpio.NewReader(r)
	var out []fileEntry
	for {
		h, err := cr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read rootfs %s: %w", a.Digest, err)
		}
		out = append(out, fileEntry{Name: h.Name, Mode: h.FileInfo().Mode().String(), UID: h.Uid, GID: h.Guid, Size: h.Size, Links: h.Links, Linkname: h.Linkname})
	}
}

func imageTagCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "tag SOURCE[:TAG]|DIGEST TARGET[:TAG]",
		Short: "Make TARGET point to the image SOURCE points to",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if c := g.daemon(cmd.Context()); c != nil {
				img, err := c.TagImage(cmd.Context(), args[0], args[1])
				if err != nil {
					return err
				}
				return g.printRef(img.Ref, images.Digest(img.Digest))
			}
			d, err := g.store().Tag(args[0], args[1])
			if err != nil {
				return err
			}
			r, _ := images.ParseReference(args[1])
			return g.printRef(r.String(), d)
		},
	}
}

func (g *globals) printRef(ref string, d images.Digest) error {
	if g.output == "json" {
		return g.printJSON(map[string]string{"ref": ref, "digest": string(d)})
	}
	_, err := fmt.Fprintf(g.stdout, "%s\t%s\n", ref, d)
	return err
}

func imageRmCmd(g *globals) *cobra.Command {
	var force bool
	var cfgPath string
	c := &cobra.Command{
		Use:     "rm NAME[:TAG]...",
		Aliases: []string{"remove"},
		Short:   "Remove image references (the blobs go at the next gc)",
		Long: `rm removes references. It refuses a reference that nodes are assigned
(by name or as boot.default_image) unless --force. The blobs stay until
` + "`ramboot image gc`" + `, which keeps what nodes still run.

On heads sharing etcd (state.backend etcd) the nodes checked are the whole
cluster's, and the removal reaches every head: each removes its own copy
of the reference, a head that is down does so when it starts, and no head
fetches it back from a peer (docs/scale-out.md). Without a daemon, rm
reads the inventory from etcd through --config, or the configuration the
head's daemon last ran with.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.daemon(cmd.Context())
			var use *provisioner.ImageUse
			if c == nil {
				var err error
				if use, err = provisioner.OfflineImageUse(cmd.Context(), g.stateDir, cfgPath); err != nil {
					return err
				}
				defer use.Close()
			}
			for _, a := range args {
				r, err := images.ParseReference(a)
				if err != nil {
					return err
				}
				if c != nil {
					if err := c.DeleteImage(cmd.Context(), r.String(), force); err != nil {
						return err
					}
				} else {
					if ns := use.Assigned(r); len(ns) > 0 && !force {
						return fmt.Errorf("remove image %s: assigned to node(s) %s (move them first, or --force)", r, strings.Join(ns, " "))
					}
					if _, err := use.Remove(cmd.Context(), g.store(), r); err != nil {
						return err
					}
				}
				if g.output != "json" {
					fmt.Fprintf(g.stdout, "removed %s\n", r)
				}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "remove even if nodes are assigned the image")
	c.Flags().StringVarP(&cfgPath, "config", "c", "", "without a daemon: the daemon's configuration file (where the inventory is: state.backend)")
	return c
}

func imageGCCmd(g *globals) *cobra.Command {
	var yes bool
	var cfgPath string
	var minAge time.Duration
	c := &cobra.Command{
		Use:   "gc [--yes]",
		Short: "Remove the blobs no reference and no node uses (a dry run without --yes)",
		Long: `gc lists the blobs (manifests, kernels, root file systems) that no image
reference names and no node runs or is assigned; with --yes it removes them.
Blobs written in the last --min-age are kept (a build or push in progress).
With the daemon running, gc goes through it, so what nodes use comes from
the live inventory. Without one, the inventory is read as by ` + "`image rm`" + `
(etcd through --config or the daemon's last configuration). gc acts on
this head's blobs only; on several heads, run it on each (every head
judges by the whole cluster's nodes).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := api.GCRequest{DryRun: !yes, MinAge: minAge.String()}
			var res api.GCResponse
			if c := g.daemon(cmd.Context()); c != nil {
				var err error
				if res, err = c.GCImages(cmd.Context(), req); err != nil {
					return err
				}
			} else {
				use, err := provisioner.OfflineImageUse(cmd.Context(), g.stateDir, cfgPath)
				if err != nil {
					return err
				}
				defer use.Close()
				opt := images.GCOptions{DryRun: !yes, MinAge: minAge, InUse: use.InUse(g.store())}
				if minAge == 0 {
					opt.MinAge = -1
				}
				r, err := g.store().GC(opt)
				if err != nil {
					return err
				}
				res = api.GCResponse{GCResult: r, InUse: opt.InUse}
			}
			if g.output == "json" {
				return g.printJSON(res)
			}
			verb := "would remove"
			if yes {
				verb = "removed"
			}
			for _, b := range res.Removed {
				fmt.Fprintf(g.stdout, "%s %s\t%s\n", verb, b.Digest, mib(b.Size))
			}
			fmt.Fprintf(g.stdout, "%s %d blobs (%s); kept %d (%s), %d in use by nodes\n", verb, len(res.Removed), mib(res.RemovedBytes), res.Kept, mib(res.KeptBytes), len(res.InUse))
			if !yes && len(res.Removed) > 0 {
				fmt.Fprintln(g.stdout, "dry run: run `ramboot image gc --yes` to remove them")
			}
			return nil
		},
	}
	c.Flags().BoolVarP(&yes, "yes", "y", false, "remove the blobs (without it, only list them)")
	c.Flags().DurationVar(&minAge, "min-age", time.Hour, "keep blobs written more recently than this (0 keeps none for their age)")
	c.Flags().StringVarP(&cfgPath, "config", "c", "", "without a daemon: the daemon's configuration file (where the inventory is: state.backend)")
	return c
}

func imageExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export NAME[:TAG]|DIGEST DIR",
		Short: "Write an image's vmlinuz, rootfs.cpio.zst, rootfs.squashfs.cpio and manifest.json into DIR",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, d, err := g.store().Export(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(imageResult{Name: m.Name, Tag: m.Tag, Ref: args[0], Digest: d, Manifest: m})
			}
			for _, a := range m.Artifacts() {
				fmt.Fprintln(g.stdout, filepath.Join(args[1], images.ExportFileNames[a.MediaType]))
			}
			fmt.Fprintln(g.stdout, filepath.Join(args[1], images.ExportManifestName))
			return nil
		},
	}
}
