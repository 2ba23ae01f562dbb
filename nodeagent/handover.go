package nodeagent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ramboot/ramboot/nodeagent/internal/procfs"
)

// DefaultInit is the image's init that the agent hands PID 1 to.
const DefaultInit = "/sbin/init"

// ExecParam is the kernel command-line parameter that names another
// program to hand PID 1 to ("ramboot.exec=/lib/systemd/systemd"), or
// "none" to keep the agent as PID 1.
const ExecParam = "ramboot.exec"

// Paths of the daemon's systemd service, written at boot into /run (the
// runtime unit directory, which systemd reads and nobody persists), so the
// image itself is not changed.
const (
	ServiceName = "ramboot-agent.service"
	ServicePath = "run/systemd/system/" + ServiceName
	ServiceWant = "run/systemd/system/multi-user.target.wants/" + ServiceName
)

// FindInit returns the program to hand PID 1 to in the root at root: the
// one ExecParam names on the kernel command line, else DefaultInit. It
// returns "" and the reason when there is none to hand over to (the image
// has no init, or the command line says "none"), so the agent stays PID 1.
func FindInit(root string) (path string, why error) {
	path = DefaultInit
	if cl, err := procfs.ReadCmdline(os.DirFS(root)); err == nil {
		if v, ok := cl.Get(ExecParam); ok {
			if v == "none" || v == "" {
				return "", fmt.Errorf("%s=%s on the kernel command line", ExecParam, v)
			}
			path = v
		}
	}
	fi, err := os.Stat(filepath.Join(root, path))
	var pe *fs.PathError
	switch {
	case errors.As(err, &pe):
		return "", fmt.Errorf("%s: %w", path, pe.Err)
	case err != nil:
		return "", fmt.Errorf("%s: %w", path, err)
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("%s: not an executable file", path)
	}
	return path, nil
}

// InitName returns the name of the program path runs once its symbolic
// links are followed inside root: "systemd" for Debian's /sbin/init.
func InitName(root, path string) string {
	p := path
	for range 16 {
		target, err := os.Readlink(filepath.Join(root, p))
		if err != nil {
			break
		}
		if filepath.IsAbs(target) {
			p = target
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	return filepath.Base(p)
}

// Unit returns the systemd unit of the agent daemon, running agent (the
// agent's path in the node's root) as `agent daemon`.
func Unit(agent string) string {
	return `# Written by ramboot-agent at boot (docs/agent.md).
[Unit]
Description=ramboot node agent daemon
Documentation=https://github.com/ramboot/ramboot/blob/main/docs/agent.md
DefaultDependencies=no
After=systemd-remount-fs.service systemd-tmpfiles-setup.service
Before=shutdown.target
Conflicts=shutdown.target

[Service]
Type=notify
ExecStart=` + agent + ` daemon
Restart=always
RestartSec=2
# Its few lines for people ("n001 ready") go to the console too; logs only
# to the journal.
StandardOutput=journal+console
StandardError=journal
# The daemon tells the head when the node goes down: give it the time.
TimeoutStopSec=15
# The daemon and the OCI runtime it starts create cgroups and move
# processes into them: the unit's cgroup tree is theirs (docs/agent.md).
Delegate=yes
# Stopping or restarting the daemon signals the daemon alone: users'
# containers and their exec sessions keep running and the next daemon
# takes them over. At shutdown systemd's final kill ends what is left.
KillMode=process

[Install]
WantedBy=multi-user.target
`
}

// InstallService writes the daemon's unit under root/run/systemd/system and
// enables it for multi-user.target there, running agent.
func InstallService(root, agent string) error {
	unit := filepath.Join(root, ServicePath)
	if err := os.MkdirAll(filepath.Dir(filepath.Join(root, ServiceWant)), 0o755); err != nil {
		return fmt.Errorf("install %s: %w", ServiceName, err)
	}
	if err := os.WriteFile(unit, []byte(Unit(agent)), 0o644); err != nil {
		return fmt.Errorf("install %s: %w", ServiceName, err)
	}
	want := filepath.Join(root, ServiceWant)
	_ = os.Remove(want)
	if err := os.Symlink("../"+ServiceName, want); err != nil {
		return fmt.Errorf("enable %s: %w", ServiceName, err)
	}
	return nil
}

// LinkCommand makes `ramboot-agent` a command on the node: a symbolic link
// to agent in the first of /usr/local/sbin, /usr/sbin, /sbin that exists in
// root. It returns the link's path ("" when none of those exists). An
// existing file there is left alone: the image may ship its own.
func LinkCommand(root, agent string) (string, error) {
	for _, dir := range []string{"usr/local/sbin", "usr/sbin", "sbin"} {
		fi, err := os.Stat(filepath.Join(root, dir))
		if err != nil || !fi.IsDir() {
			continue
		}
		link := filepath.Join(dir, "ramboot-agent")
		err = os.Symlink(agent, filepath.Join(root, link))
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("link ramboot-agent: %w", err)
		}
		return "/" + strings.TrimPrefix(link, "/"), nil
	}
	return "", nil
}
