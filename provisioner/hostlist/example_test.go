package hostlist_test

import (
	"fmt"
	"net/netip"

	"github.com/ramboot/ramboot/provisioner/hostlist"
)

func ExampleExpand() {
	names, err := hostlist.Expand("rack[1-2]n[01-03],login1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(names)
	// Output: [rack1n01 rack1n02 rack1n03 rack2n01 rack2n02 rack2n03 login1]
}

func ExampleExpand_errors() {
	for _, s := range []string{"n[01-3]", "n[9-1]", "n[1-99999999]", "n[1-4"} {
		_, err := hostlist.Expand(s)
		fmt.Println(err)
	}
	// Output:
	// hostlist pattern "n[01-3]": range "01-3": width mismatch: "01" has 2 digits, "3" has 1 (write both with the same width)
	// hostlist pattern "n[9-1]": range "9-1": reversed (9 > 1)
	// expand "n[1-99999999]": too many names: more than 100000
	// hostlist "n[1-4": unclosed '['
}

func ExampleCompress() {
	// The stragglers of a `status`, in any order.
	s, _ := hostlist.Compress([]string{"n010", "n003", "n001", "n002", "n009", "gpu2"})
	fmt.Println(s)
	s, _ = hostlist.Compress([]string{"rack2n01", "rack1n01", "rack1n02", "rack2n02"})
	fmt.Println(s)
	// Output:
	// gpu2,n[001-003,009-010]
	// rack[1-2]n[01-02]
}

func ExampleIPs() {
	names, _ := hostlist.Expand("n[001-004]")
	subnet := netip.MustParsePrefix("10.0.0.0/24")
	ips, err := hostlist.IPs("10.0.0.101+", len(names), subnet)
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, n := range names {
		fmt.Println(n, ips[i])
	}
	_, err = hostlist.IPs("10.0.0.253+", len(names), subnet)
	fmt.Println(err)
	// Output:
	// n001 10.0.0.101
	// n002 10.0.0.102
	// n003 10.0.0.103
	// n004 10.0.0.104
	// addresses "10.0.0.253+": 10.0.0.255 is the network or broadcast address of 10.0.0.0/24
}

func ExampleMACs() {
	macs, _ := hostlist.MACs("52:54:00:00:01:fe+", 3)
	fmt.Println(macs)
	// Output: [52:54:00:00:01:fe 52:54:00:00:01:ff 52:54:00:00:02:00]
}
