package main

import (
	"fmt"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/provisioner"
)

func imageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "image", Short: "Build and list node images (in the state directory's image store)"}
	c.AddCommand(imageBuildCmd(g), imageListCmd(g))
	return c
}

func (g *globals) store() *images.Store {
	return &images.Store{Dir: filepath.Join(g.stateDir, provisioner.ImagesDir)}
}

// imageResult is what `image build -o json` prints.
type imageResult struct {
	Name     string          `json:"name"`
	Digest   images.Digest   `json:"digest"`
	Manifest images.Manifest `json:"manifest"`
}

func imageBuildCmd(g *globals) *cobra.Command {
	var name, kernel string
	var level int
	c := &cobra.Command{
		Use:   "build ROOTFS_DIR --name NAME [--kernel FILE]",
		Short: "Build a node image from a root file-system tree: a zstd newc cpio plus its kernel",
		Long: `build archives ROOTFS_DIR as a reproducible newc cpio compressed with zstd,
takes the kernel from ROOTFS_DIR/boot/vmlinuz-* (or --kernel), and commits
both with a manifest to the image store under --state-dir as NAME. Progress
goes to stderr. It works without a running daemon, which picks the new image
up at the next boot.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opt := build.Options{RootDir: args[0], Name: name, Kernel: kernel, Store: g.store(), Level: level}
			if g.output == "table" {
				opt.Progress = g.stderr
			}
			m, d, err := build.Build(cmd.Context(), opt)
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.printJSON(imageResult{Name: m.Name, Digest: d, Manifest: m})
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "IMAGE\t%s\t%s\n", m.Name, d)
			fmt.Fprintf(tw, "kernel\t%s\t%s\t%d bytes\n", orDash(m.KernelVersion), m.Kernel.Digest, m.Kernel.Size)
			fmt.Fprintf(tw, "rootfs\t%s\t%s\t%d bytes (%d uncompressed)\n", "cpio+zstd", m.Rootfs.Digest, m.Rootfs.Size, m.RootfsUncompressedSize)
			fmt.Fprintf(tw, "content\t\t%s\t\n", m.ContentDigest)
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&name, "name", "", "image name (required)")
	c.Flags().StringVar(&kernel, "kernel", "", "kernel file (default: the newest ROOTFS_DIR/boot/vmlinuz-*)")
	c.Flags().IntVar(&level, "level", 0, "zstd level 1-22 (default: the builder's fast default)")
	_ = c.MarkFlagRequired("name")
	return c
}

func imageListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the images in the store",
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			refs, err := g.store().List()
			if err != nil {
				return err
			}
			if g.output == "json" {
				out := make([]imageResult, 0, len(refs))
				for _, r := range refs {
					out = append(out, imageResult{Name: r.Name, Digest: r.Digest, Manifest: r.Manifest})
				}
				return g.printJSON(out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tKERNEL\tSIZE\tCREATED")
			for _, r := range refs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f MiB\t%s\n", r.Name, r.Digest, orDash(r.Manifest.KernelVersion),
					float64(r.Manifest.Rootfs.Size+r.Manifest.Kernel.Size)/(1<<20), r.Manifest.Created.Local().Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
}
