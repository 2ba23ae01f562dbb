package hostkeys_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ramboot/ramboot/provisioner/hostkeys"
)

func ExampleEnsure() {
	ctx := context.Background()
	state, _ := os.MkdirTemp("", "ramboot-state")
	defer os.RemoveAll(state)
	store := &hostkeys.Dir{Path: filepath.Join(state, "ssh-host-keys")}

	keys, err := hostkeys.Ensure(ctx, store, []string{"n001", "n002"}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, k := range keys["n001"] {
		pub := strings.Fields(string(k.PublicFile("root@n001")))
		fmt.Println("etc/ssh/"+k.FileName(), pub[0], pub[2])
	}
	// A head restart: the same keys come back.
	again, _ := hostkeys.Ensure(ctx, &hostkeys.Dir{Path: store.Path}, []string{"n001"}, nil)
	a, _ := keys["n001"][0].PublicKey()
	b, _ := again["n001"][0].PublicKey()
	fmt.Println("kept:", string(a.Marshal()) == string(b.Marshal()))
	// Output:
	// etc/ssh/ssh_host_ed25519_key ssh-ed25519 root@n001
	// etc/ssh/ssh_host_ecdsa_key ecdsa-sha2-nistp256 root@n001
	// kept: true
}
