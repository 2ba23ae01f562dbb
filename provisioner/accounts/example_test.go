package accounts_test

import (
	"fmt"
	"testing/fstest"

	"github.com/ramboot/ramboot/provisioner/accounts"
)

func ExampleMerge() {
	// The head's files (os.DirFS("/") on a real head).
	headFS := fstest.MapFS{
		"etc/passwd": {Data: []byte("root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001:Alice:/home/alice:/bin/bash\nbob:x:1002:1002:Bob:/home/bob:/bin/bash\n")},
		"etc/group":  {Data: []byte("root:x:0:\nalice:x:1001:\nbob:x:1002:\n")},
		"etc/shadow": {Data: []byte("root:!:19700::::::\nalice:$y$j9T$hash:19700:0:99999:7:::\nbob:!:19700::::::\n")},
	}
	// The image's own files, as the image was built.
	imageFS := fstest.MapFS{
		"etc/passwd": {Data: []byte("root:x:0:0:root:/root:/bin/sh\n")},
		"etc/group":  {Data: []byte("root:x:0:\n")},
		"etc/shadow": {Data: []byte("root:*:19000:0:99999:7:::\n")},
	}
	head, _ := accounts.ReadFiles(headFS)
	set, err := accounts.Select(head, accounts.Selection{UIDs: []accounts.IDRange{{First: 1000, Last: 1001}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	img, _ := accounts.ReadFiles(imageFS)
	merged, err := accounts.Merge(img, set)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(string(merged.Passwd), string(merged.Group), string(merged.Shadow))
	// Output:
	// root:x:0:0:root:/root:/bin/sh
	// alice:x:1001:1001:Alice:/home/alice:/bin/bash
	// root:x:0:
	// alice:x:1001:
	// root:*:19000:0:99999:7:::
	// alice:$y$j9T$hash:19700:0:99999:7:::
}
