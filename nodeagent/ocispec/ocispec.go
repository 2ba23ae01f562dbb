// Package ocispec writes the OCI runtime configuration (config.json) of a
// ramboot container, so that every container the agent starts gets the same
// isolation from the runtime (runc or crun): mount, pid, ipc and uts
// namespaces (network optional), a cgroup with memory, CPU and pid limits,
// no capabilities for users, no_new_privs, and the default seccomp profile
// of this package (neither runc nor crun ships one).
//
//	s := ocispec.New(ocispec.Options{
//		Args: []string{"/bin/sh", "-c", "echo hi"},
//		UID: 1000, GID: 1000,
//		MemoryBytes: 1 << 30,
//		CgroupsPath: "/ramboot/c1",
//	})
//	err := ocispec.Write(bundleDir, s)
//
// The default seccomp profile ([DefaultSeccomp]) allows every system call
// but those that administer the kernel or the machine, or that open a way
// out of the container's isolation; those fail with EPERM (ENOSYS for
// clone3, so that libc falls back to clone, whose namespace flags the
// profile can inspect). An allow list (Docker's) breaks HPC software that
// uses recent or rare calls (io_uring, MPI's cross-memory attach); the
// deny list keeps what the isolation needs and nothing an ordinary program
// uses. docs/containers.md lists the calls.
package ocispec

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// DefaultPath is the PATH of a container's process when its environment
// gives none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Version is the OCI runtime specification version the configuration
// declares: the newest that runc 1.1 and crun 1.8 (Debian 12) accept. The
// configuration uses nothing newer.
const Version = "1.0.2"

// RootCapabilities are the only capabilities a container running as root
// (allowed by the administrator) keeps; user containers keep none.
var RootCapabilities = []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_NET_BIND_SERVICE"}

// Options describes one container's configuration.
type Options struct {
	// Rootfs is the root file system directory, absolute or relative to
	// the bundle. Default "rootfs".
	Rootfs string
	// Hostname is the container's host name (its own uts namespace).
	Hostname string
	// Args is the command and its arguments; required.
	Args []string
	// Env is the environment, KEY=VALUE; PATH is added when missing.
	Env []string
	// Cwd is the working directory. Default "/".
	Cwd string
	// UID and GID are the process's user and group.
	UID, GID uint32
	// AdditionalGIDs are its supplementary groups.
	AdditionalGIDs []uint32
	// MemoryBytes caps the cgroup's memory (including the tmpfs pages
	// its processes write: the container's writable layer). 0 = no limit.
	MemoryBytes int64
	// CPUs caps CPU time in CPUs (1.5 = one and a half). 0 = no limit.
	CPUs float64
	// Pids caps the number of tasks. 0 = no limit.
	Pids int64
	// CgroupsPath is the container's cgroup. Empty leaves it to the
	// runtime: a new cgroup under the caller's own, which is how a
	// container started inside a Slurm step nests under the step.
	CgroupsPath string
	// HostNetwork keeps the host's network namespace (the default for HPC:
	// MPI and file systems need the host's interfaces). False gives the
	// container a network namespace of its own with only loopback.
	HostNetwork bool
	// Binds are bind mounts from the host.
	Binds []Bind
	// ShmBytes caps the container's /dev/shm. Default 64 MiB.
	ShmBytes int64
	// Rootless makes the configuration for a runtime run by the user
	// (runc --rootless, as Slurm's oci.conf runs it): a user namespace
	// whose root is the user (UID, GID), no capabilities, and no cgroup
	// settings.
	Rootless bool
	// NoSeccomp leaves out the seccomp profile (for runtimes built
	// without seccomp; the agent refuses those unless told otherwise).
	NoSeccomp bool
}

// Bind is one bind mount from the host into the container.
type Bind struct {
	// Source is the host path.
	Source string `json:"source"`
	// Destination is the absolute path in the container.
	Destination string `json:"destination"`
	// ReadOnly makes the mount read-only.
	ReadOnly bool `json:"readOnly,omitempty"`
}

// New returns the OCI configuration for o.
func New(o Options) *specs.Spec {
	rootfs := o.Rootfs
	if rootfs == "" {
		rootfs = "rootfs"
	}
	cwd := o.Cwd
	if cwd == "" {
		cwd = "/"
	}
	env := append([]string(nil), o.Env...)
	hasPath := false
	for _, e := range env {
		hasPath = hasPath || len(e) >= 5 && e[:5] == "PATH="
	}
	if !hasPath {
		env = append([]string{"PATH=" + DefaultPath}, env...)
	}
	var caps []string
	if o.UID == 0 {
		caps = RootCapabilities
	}
	shm := o.ShmBytes
	if shm <= 0 {
		shm = 64 << 20
	}
	s := &specs.Spec{
		Version:  Version,
		Hostname: o.Hostname,
		Root:     &specs.Root{Path: rootfs},
		Process: &specs.Process{
			Args: o.Args,
			Env:  env,
			Cwd:  cwd,
			User: specs.User{UID: o.UID, GID: o.GID, AdditionalGids: o.AdditionalGIDs},
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
				Inheritable: []string{}, Ambient: []string{},
			},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", fmt.Sprintf("size=%d", shm)}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: o.CgroupsPath,
			Resources:   resources(o),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
				"/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	if !o.HostNetwork {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	} else {
		// sysfs can only be mounted by the owner of the network
		// namespace: with the host's, bind the host's /sys read-only.
		s.Mounts[5] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
	}
	for _, b := range o.Binds {
		opts := []string{"rbind", "nosuid", "nodev"}
		if b.ReadOnly {
			opts = append(opts, "ro")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: b.Destination, Type: "bind", Source: b.Source, Options: opts})
	}
	if !o.NoSeccomp {
		s.Linux.Seccomp = DefaultSeccomp()
	}
	if o.Rootless {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		// The user is root of its own namespace, as `runc spec
		// --rootless` makes it: runc needs the namespace's root mapped.
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: o.UID, Size: 1}}
		s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: o.GID, Size: 1}}
		s.Process.User = specs.User{}
		empty := []string{}
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: empty, Effective: empty, Permitted: empty, Inheritable: empty, Ambient: empty}
		s.Linux.Resources = nil
		s.Linux.CgroupsPath = ""
		// A user namespace cannot mount sysfs or the cgroup file system
		// of the host's network and cgroup namespaces: bind them.
		for i, m := range s.Mounts {
			switch m.Destination {
			case "/sys":
				s.Mounts[i] = specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
			case "/sys/fs/cgroup":
				s.Mounts[i] = specs.Mount{Destination: "/sys/fs/cgroup", Type: "bind", Source: "/sys/fs/cgroup", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}}
			}
		}
	}
	return s
}

func resources(o Options) *specs.LinuxResources {
	r := &specs.LinuxResources{
		// Devices: deny all but what runc and crun add by default
		// (null, zero, full, random, urandom, tty, ptmx).
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if o.MemoryBytes > 0 {
		limit := o.MemoryBytes
		r.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	if o.CPUs > 0 {
		period := uint64(100000)
		quota := int64(o.CPUs * float64(period))
		r.CPU = &specs.LinuxCPU{Period: &period, Quota: &quota}
	}
	if o.Pids > 0 {
		pids := o.Pids
		r.Pids = &specs.LinuxPids{Limit: &pids}
	}
	return r
}

// deniedSyscalls fail with EPERM in every container.
var deniedSyscalls = []string{
	// kernel and machine administration
	"acct", "add_key", "adjtimex", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "get_kernel_syms", "init_module", "ioperm", "iopl",
	"kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "nfsservctl",
	"perf_event_open", "query_module", "quotactl", "reboot", "request_key", "settimeofday",
	"stime", "swapoff", "swapon", "syslog", "_sysctl", "uselib", "userfaultfd", "vhangup",
	// ways out of the isolation
	"fsconfig", "fsmount", "fsopen", "fspick", "mount", "mount_setattr", "move_mount",
	"name_to_handle_at", "open_by_handle_at", "open_tree", "pivot_root", "setns",
	"umount", "umount2", "unshare",
}

// DefaultSeccomp returns the agent's default seccomp profile for the
// running architecture: allow, except deniedSyscalls (EPERM), clone with
// any namespace flag (EPERM) and clone3 (ENOSYS).
func DefaultSeccomp() *specs.LinuxSeccomp {
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	nsFlags := []uint64{unix.CLONE_NEWNS, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER,
		unix.CLONE_NEWPID, unix.CLONE_NEWNET, unix.CLONE_NEWCGROUP, unix.CLONE_NEWTIME}
	// clone's flags are its first argument on every architecture but
	// s390x, where they are the second.
	flagsArg := uint(0)
	if runtime.GOARCH == "s390x" {
		flagsArg = 1
	}
	rules := []specs.LinuxSyscall{
		{Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm},
		{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
	}
	// One rule per flag: conditions within a rule are all required, rules
	// are alternatives, and seccomp has no "masked not equal".
	for _, f := range nsFlags {
		rules = append(rules, specs.LinuxSyscall{Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
			Args: []specs.LinuxSeccompArg{{Index: flagsArg, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}}})
	}
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: architectures(),
		Syscalls:      rules,
	}
}

// architectures returns the seccomp architectures of the running one: the
// native one and those its kernel also runs (32-bit compat).
func architectures() []specs.Arch {
	switch runtime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	case "ppc64le":
		return []specs.Arch{specs.ArchPPC64LE}
	case "s390x":
		return []specs.Arch{specs.ArchS390X, specs.ArchS390}
	case "riscv64":
		return []specs.Arch{specs.ArchRISCV64}
	}
	return nil
}

// Write writes s as dir/config.json (mode 0600), atomically.
func Write(dir string, s *specs.Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s/config.json: %w", dir, err)
	}
	tmp := filepath.Join(dir, ".config.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write bundle config: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "config.json")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write bundle config: %w", err)
	}
	return nil
}
