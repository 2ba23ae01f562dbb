package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// rambootServe prepares `ramboot serve` with the benchmark's nodes (once:
// its state directory is kept between runs) and returns its command line.
func (b *bench) rambootServe(ctx context.Context) ([]string, func(), error) {
	state := filepath.Join(b.work, "ramboot-state")
	conf := filepath.Join(b.work, "ramboot.yaml")
	if b.ramboot == "" {
		if err := b.buildRamboot(ctx); err != nil {
			return nil, nil, err
		}
		// The DHCP server alone: TFTP, RA, SFTP and rival detection off;
		// the relay's link is the head's own subnet.
		y := fmt.Sprintf(`interface: s0
state_dir: %s
log_level: warn
dhcp:
  detect_rivals: false
tftp:
  enabled: false
ra:
  enabled: false
sftp:
  enabled: false
http:
  port: 8080
`, state)
		if err := os.WriteFile(conf, []byte(y), 0o644); err != nil {
			return nil, nil, err
		}
		// The nodes, in one transaction: a host list with MAC and IP
		// ranges, the MACs and addresses of the list.
		cluster := fmt.Sprintf(`nodes:
  - name: n[00000-%05d]
    interfaces:
      - {mac: "02:00:00:00:00:00+", ip: %s+}
`, b.o.nodes-1, firstNodeIP)
		clusterFile := filepath.Join(b.work, "cluster.yaml")
		if err := os.WriteFile(clusterFile, []byte(cluster), 0o644); err != nil {
			return nil, nil, err
		}
		if err := b.applyNodes(ctx, conf, state, clusterFile); err != nil {
			return nil, nil, err
		}
	}
	return []string{b.ramboot, "serve", "--config", conf}, nil, nil
}

// applyNodes runs `ramboot apply` of the cluster file against a daemon
// (the CLI goes through its admin API) started for it in the server
// namespace and stopped after, by pid.
func (b *bench) applyNodes(ctx context.Context, conf, state, clusterFile string) error {
	logFile := filepath.Join(b.work, "ramboot-apply-serve.log")
	f, err := os.Create(logFile)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command("ip", "netns", "exec", b.srvNS, b.ramboot, "serve", "--config", conf)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start ramboot serve for the apply: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.CommandContext(ctx, b.ramboot, "apply", "-f", clusterFile, "--state-dir", state).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return nil
		case !errors.As(err, &ee) || ee.ExitCode() != 6: // 6: no daemon answers yet
			return fmt.Errorf("ramboot apply of %d nodes: %w: %s", b.o.nodes, err, out)
		case time.Now().After(deadline):
			msg, _ := os.ReadFile(logFile)
			return fmt.Errorf("ramboot serve not answering after 60 s for the apply:\n%s", msg)
		}
		select {
		case <-done:
			msg, _ := os.ReadFile(logFile)
			return fmt.Errorf("ramboot serve exited before the apply:\n%s", msg)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// buildRamboot builds ramboot and ramboot-agent (which serve wants next to
// it) into the work directory.
func (b *bench) buildRamboot(ctx context.Context) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return err
	}
	b.ramboot = filepath.Join(b.work, "ramboot")
	for out, pkg := range map[string]string{b.ramboot: "./provisioner/cmd/ramboot", filepath.Join(b.work, "ramboot-agent"): "./nodeagent/cmd/ramboot-agent"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w: %s", pkg, err, msg)
		}
	}
	return nil
}
