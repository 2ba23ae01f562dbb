// Command dhcplat times DHCP exchanges with a real client
// (insomniacslk/dhcp's nclient4 on a raw socket): DISCOVER to OFFER and
// REQUEST to ACK, one DORA per round, and prints one line per exchange in
// microseconds. provisioner/internal/lab/dhcp-latency.sh runs it inside a
// namespace of its own against ramboot and dnsmasq.
//
//	dhcplat -i cli0 -n 200
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

func main() {
	iface := flag.String("i", "", "interface")
	n := flag.Int("n", 100, "rounds")
	flag.Parse()
	if err := run(*iface, *n); err != nil {
		fmt.Fprintln(os.Stderr, "dhcplat:", err)
		os.Exit(1)
	}
}

func run(iface string, n int) error {
	c, err := nclient4.New(iface, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(1))
	if err != nil {
		return err
	}
	defer c.Close()
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		t0 := time.Now()
		offer, err := c.DiscoverOffer(ctx, dhcpv4.WithBroadcast(true))
		t1 := time.Now()
		if err != nil {
			cancel()
			return fmt.Errorf("discover: %w", err)
		}
		_, err = c.RequestFromOffer(ctx, offer, dhcpv4.WithBroadcast(true))
		t2 := time.Now()
		cancel()
		if err != nil {
			return fmt.Errorf("request: %w", err)
		}
		fmt.Printf("offer %d\nack %d\n", t1.Sub(t0).Microseconds(), t2.Sub(t1).Microseconds())
	}
	return nil
}
