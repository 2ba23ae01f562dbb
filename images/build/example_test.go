package build_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/ramboot/ramboot/images"
	"github.com/ramboot/ramboot/images/build"
)

func ExampleBuild() {
	tmp, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "rootfs")
	for name, data := range map[string]string{
		"boot/vmlinuz-6.1.0-18-amd64": "kernel",
		"etc/hostname":                "node\n",
		"usr/bin/true":                "",
	} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755)
		os.WriteFile(filepath.Join(root, name), []byte(data), 0o644)
	}

	st := &images.Store{Dir: filepath.Join(tmp, "store")}
	epoch := time.Unix(1_700_000_000, 0)
	m, _, err := build.Build(context.Background(), build.Options{
		RootDir:         root,
		Name:            "example:v1",
		Store:           st,
		SourceDateEpoch: &epoch,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("kernel", m.KernelVersion)

	// List the root file system: the tree, then the image-id file.
	f, err := st.OpenBlob(m.Rootfs.Digest)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(f)
	if err != nil {
		log.Fatal(err)
	}
	defer zr.Close()
	r := cpio.NewReader(zr)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		fmt.Println(h.Name, bytes.Equal(data, []byte(m.ContentDigest+"\n")))
	}
	// Output:
	// kernel 6.1.0-18-amd64
	// . false
	// boot false
	// boot/vmlinuz-6.1.0-18-amd64 false
	// etc false
	// etc/hostname false
	// usr false
	// usr/bin false
	// usr/bin/true false
	// etc/ramboot false
	// etc/ramboot/image-id true
}
