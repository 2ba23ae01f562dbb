package tftp_test

import (
	"bytes"
	"context"
	"fmt"
	"testing/fstest"

	pintftp "github.com/pin/tftp/v3"

	"github.com/ramboot/ramboot/pxe/tftp"
)

// A server for two iPXE binaries; a client fetches one of them the way PXE
// firmware names it, with a leading slash.
func ExampleServer() {
	events := make(chan tftp.Event, 10)
	srv := &tftp.Server{
		Root: fstest.MapFS{
			"undionly.kpxe": {Data: []byte("iPXE for BIOS")},
			"snponly.efi":   {Data: []byte("iPXE for UEFI")},
		},
		Files:    []string{"undionly.kpxe", "snponly.efi"},
		Observer: func(ev tftp.Event) { events <- ev },
	}
	conn, err := tftp.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()

	c, _ := pintftp.NewClient(conn.LocalAddr().String())
	wt, err := c.Receive("/snponly.efi", "octet")
	if err != nil {
		panic(err)
	}
	var buf bytes.Buffer
	wt.WriteTo(&buf)
	fmt.Printf("client: %q\n", buf.String())

	if _, err = c.Receive("/etc/passwd", "octet"); err != nil {
		fmt.Println("client: refused")
	}

	cancel()
	fmt.Println("Serve:", <-done)
	close(events)
	for ev := range events {
		fmt.Printf("event: %s, %d bytes, err=%v\n", ev.File, ev.Bytes, ev.Err)
	}
	// Unordered output:
	// client: "iPXE for UEFI"
	// client: refused
	// Serve: <nil>
	// event: snponly.efi, 13 bytes, err=<nil>
	// event: etc/passwd, 0 bytes, err=read "etc/passwd": file not found
}
