package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMPCommand sends one command of QEMU's machine protocol ("stop", "cont",
// "system_powerdown", ...) to the VM and waits for its answer.
func (v *VM) QMPCommand(ctx context.Context, command string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", v.QMP)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	// The greeting, then capabilities negotiation, then the command; events
	// may come in between and are skipped.
	if _, err := r.ReadBytes('\n'); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if _, err := fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd); err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			var msg struct {
				Return json.RawMessage `json:"return"`
				Error  *struct {
					Desc string `json:"desc"`
				} `json:"error"`
			}
			if err := json.Unmarshal(line, &msg); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
			if msg.Error != nil {
				return fmt.Errorf("qmp %s: %s", cmd, msg.Error.Desc)
			}
			if msg.Return != nil {
				break
			}
		}
	}
	return nil
}
