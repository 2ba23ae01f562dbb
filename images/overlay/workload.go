package overlay

import "time"

// The node API routes of the workload on a node (containers and the
// scheduler's jobs), relative to Config.HeadURL; "{node}" is Config.Node.
// Both take "Authorization: Bearer <Config.Token>" and are answered only to
// the node's reserved address.
const (
	// ImagePath resolves an image reference ("name", "name:tag" or a
	// manifest digest "sha256:...") in the head's store: GET, answered
	// with a NodeImage.
	ImagePath = "/api/v1/nodes/{node}/images/{ref}"
	// JobEventPath records a JobEvent in the node's timeline: POST.
	JobEventPath = "/api/v1/nodes/{node}/jobs"
)

// NodeImage is the head's answer on ImagePath: what the node fetches to run
// a container of the image.
type NodeImage struct {
	// Ref is the reference as asked.
	Ref string `json:"ref"`
	// Name is the image's name in the store.
	Name string `json:"name"`
	// Digest is the manifest digest, "sha256:<hex>".
	Digest string `json:"digest"`
	// Rootfs is the digest of the root file-system blob (a zstd-compressed
	// newc cpio) the node verifies after download.
	Rootfs string `json:"rootfs"`
	// RootfsSize is the blob's size in bytes.
	RootfsSize int64 `json:"rootfsSize"`
	// RootfsUncompressedSize is the size of the cpio archive inside.
	RootfsUncompressedSize int64 `json:"rootfsUncompressedSize"`
	// RootfsPath is where the node downloads the blob, relative to
	// Config.HeadURL: the head's boot route, by manifest digest.
	RootfsPath string `json:"rootfsPath"`
	// CompressedRoot is the digest of the image's compressed root blob (a
	// newc cpio holding a squashfs image, see images.CompressedRootOffset),
	// when the image has one: the node keeps it compressed in RAM and
	// mounts it as the lower layer instead of unpacking Rootfs.
	CompressedRoot string `json:"compressedRoot,omitempty"`
	// CompressedRootSize is that blob's size in bytes.
	CompressedRootSize int64 `json:"compressedRootSize,omitempty"`
	// CompressedRootPath is where the node downloads it, relative to
	// Config.HeadURL.
	CompressedRootPath string `json:"compressedRootPath,omitempty"`
}

// JobEvent is what the node says about a scheduler job at its prolog and
// epilog.
type JobEvent struct {
	// Job is the scheduler's job id.
	Job string `json:"job"`
	// User is the job's user name.
	User string `json:"user,omitempty"`
	// Hook is "prolog" or "epilog".
	Hook string `json:"hook"`
	// OK is true when the hook succeeded: for the epilog, the node is
	// clean.
	OK bool `json:"ok"`
	// Detail says what was done or what failed.
	Detail string `json:"detail,omitempty"`
}

// Bounds of the workload a heartbeat carries: a node with more lists the
// first ones and counts the rest (Workload.OmittedJobs, OmittedContainers);
// the head refuses a heartbeat over them.
const (
	MaxWorkloadJobs       = 64
	MaxWorkloadContainers = 128
	// MaxWorkloadText bounds each text field of a job or container.
	MaxWorkloadText = 128
)

// Workload is the node's jobs and containers, as the agent daemon sends
// them with each heartbeat.
type Workload struct {
	// Jobs are the scheduler jobs the prolog registered.
	Jobs []WorkloadJob `json:"jobs"`
	// Containers are the node's containers.
	Containers []WorkloadContainer `json:"containers"`
	// OmittedJobs counts jobs left out past MaxWorkloadJobs.
	OmittedJobs int `json:"omittedJobs,omitempty"`
	// OmittedContainers counts containers left out past
	// MaxWorkloadContainers.
	OmittedContainers int `json:"omittedContainers,omitempty"`
}

// WorkloadJob is one job in a Workload.
type WorkloadJob struct {
	// ID is the scheduler's job id.
	ID string `json:"id"`
	// User is the job's user name.
	User string `json:"user"`
	// UID is the user's id.
	UID int `json:"uid"`
	// MemoryBytes is the job's memory on the node, 0 when unknown.
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// Registered is when the prolog registered it.
	Registered time.Time `json:"registered,omitzero"`
}

// WorkloadContainer is one container in a Workload.
type WorkloadContainer struct {
	// ID is the container's id.
	ID string `json:"id"`
	// Name is its name on the node.
	Name string `json:"name"`
	// Image is its image reference as asked.
	Image string `json:"image"`
	// Job is the job it belongs to, if any.
	Job string `json:"job,omitempty"`
	// UID is its processes' user.
	UID int `json:"uid"`
	// State is created, running or exited.
	State string `json:"state"`
	// ExitCode is its exit status once exited.
	ExitCode int `json:"exitCode"`
	// Started is when its command started.
	Started time.Time `json:"started,omitzero"`
}
