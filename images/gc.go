package images

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// DefaultGCMinAge is how recent a blob must be for GC to keep it although
// nothing uses it: a build or an upload between its first Put and its
// Commit.
const DefaultGCMinAge = time.Hour

// GCOptions configures GC.
type GCOptions struct {
	// InUse are manifest digests in use outside the store (what nodes run
	// or are booting, what an inventory pins): GC keeps them and their
	// blobs although no reference names them.
	InUse []Digest
	// DryRun reports what GC would remove and removes nothing.
	DryRun bool
	// MinAge keeps blobs written more recently than this. Default
	// DefaultGCMinAge; a negative value keeps none for that reason.
	MinAge time.Duration
}

// GCResult says what GC removed (or, in a dry run, would remove).
type GCResult struct {
	// Removed lists the blobs removed, sorted by digest.
	Removed []BlobInfo `json:"removed"`
	// RemovedBytes is their total size.
	RemovedBytes int64 `json:"removedBytes"`
	// Kept is the number of blobs kept.
	Kept int `json:"kept"`
	// KeptBytes is their total size.
	KeptBytes int64 `json:"keptBytes"`
	// DryRun is true when nothing was removed.
	DryRun bool `json:"dryRun"`
}

// GC removes the blobs that no reference and no digest of opt.InUse uses:
// manifests, and kernels and root file systems no kept manifest names.
// It holds the store's lock exclusively, so no Commit runs meanwhile, and
// keeps blobs younger than opt.MinAge, so a build or upload between its
// Puts and its Commit keeps its blobs. A manifest in InUse that is not
// stored is not an error (it is gone already).
func (s *Store) GC(opt GCOptions) (GCResult, error) {
	res := GCResult{DryRun: opt.DryRun}
	if err := s.check(); err != nil {
		return res, err
	}
	if _, err := os.Stat(s.Dir); errors.Is(err, fs.ErrNotExist) {
		return res, nil // nothing stored yet
	}
	minAge := opt.MinAge
	if minAge == 0 {
		minAge = DefaultGCMinAge
	}
	unlock, err := s.lock(true)
	if err != nil {
		return res, err
	}
	defer unlock()

	keep := map[Digest]bool{}
	keepManifest := func(d Digest) error {
		m, err := s.ReadManifest(d)
		if err != nil {
			return err
		}
		keep[d] = true
		for _, a := range m.Artifacts() {
			keep[a.Digest] = true
		}
		return nil
	}
	rs, err := s.references()
	if err != nil {
		return res, fmt.Errorf("collect garbage: %w", err)
	}
	for _, r := range rs {
		_, d, err := s.resolve(r)
		if err != nil {
			// Keep going would remove what a damaged ref may still
			// name: refuse, naming it.
			return res, fmt.Errorf("collect garbage: %w (repair or remove the reference first)", err)
		}
		if err := keepManifest(d); err != nil {
			return res, fmt.Errorf("collect garbage: reference %s: %w", r, err)
		}
	}
	for _, d := range opt.InUse {
		if _, err := ParseDigest(string(d)); err != nil {
			return res, fmt.Errorf("collect garbage: in-use digest: %w", err)
		}
		if err := keepManifest(d); err != nil && !errors.Is(err, ErrNotFound) {
			return res, fmt.Errorf("collect garbage: in-use manifest %s: %w", d, err)
		}
	}
	blobs, err := s.Blobs()
	if err != nil {
		return res, fmt.Errorf("collect garbage: %w", err)
	}
	cutoff := time.Now().Add(-minAge)
	for _, b := range blobs {
		if keep[b.Digest] || (minAge > 0 && b.ModTime.After(cutoff)) {
			res.Kept++
			res.KeptBytes += b.Size
			continue
		}
		if !opt.DryRun {
			if err := os.Remove(s.blobPath(b.Digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return res, fmt.Errorf("collect garbage: remove blob %s: %w", b.Digest, err)
			}
		}
		res.Removed = append(res.Removed, b)
		res.RemovedBytes += b.Size
	}
	if !opt.DryRun && len(res.Removed) > 0 {
		if err := syncDir(s.blobDir()); err != nil {
			return res, err
		}
	}
	return res, nil
}
