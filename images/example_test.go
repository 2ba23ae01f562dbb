package images_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/ramboot/ramboot/images"
)

func ExampleStore() {
	dir, err := os.MkdirTemp("", "store")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st := &images.Store{Dir: dir}
	ctx := context.Background()

	// Blobs first; nothing is visible under a name yet.
	kernel, err := st.Put(ctx, strings.NewReader("a kernel"))
	if err != nil {
		log.Fatal(err)
	}
	kernel.MediaType = images.MediaTypeKernel
	rootfs, err := st.Put(ctx, strings.NewReader("a compressed cpio archive"))
	if err != nil {
		log.Fatal(err)
	}
	rootfs.MediaType = images.MediaTypeRootfs

	// Then the manifest, which makes the name resolve.
	_, err = st.Commit("debian12:v1", images.Manifest{
		SchemaVersion:          images.SchemaVersion,
		Created:                time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		Source:                 "/srv/rootfs/debian12",
		Kernel:                 kernel,
		Rootfs:                 rootfs,
		RootfsUncompressedSize: 1 << 20,
		Files:                  42,
		ContentDigest:          images.DigestOf([]byte("uncompressed archive")),
	})
	if err != nil {
		log.Fatal(err)
	}

	m, d, err := st.Resolve("debian12:v1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.Name, m.Tag, d)
	fmt.Println(m.Rootfs.Digest, m.Rootfs.Size)
	// Output:
	// debian12 v1 sha256:a06921ef0a471b92d9834508a31f4283a4480b662a3f19733b3b9b79aa119713
	// sha256:21a979a6c966c0093b5f5cfc05ab28b41f9b7f9f7dee7bb3650ba757031ed36c 25
}
