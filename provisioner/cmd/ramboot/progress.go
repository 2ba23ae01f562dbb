package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/ramboot/ramboot/images/build"
	"github.com/ramboot/ramboot/images/push"
)

// progressMode says how a long command shows its progress on stderr.
type progressMode int

const (
	progressNone  progressMode = iota // -q
	progressLines                     // not a terminal: a line every few seconds
	progressBars                      // a terminal: bars
)

func (g *globals) progressMode(quiet bool) progressMode {
	if quiet {
		return progressNone
	}
	if f, ok := g.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return progressBars
	}
	return progressLines
}

// lineEvery is how often plain progress lines are printed.
const lineEvery = 2 * time.Second

// buildProgress shows a build's progress: a bar of archive bytes with
// files, rate and ETA on a terminal, or a line every two seconds.
type buildProgress struct {
	mode  progressMode
	w     io.Writer
	name  string
	mu    sync.Mutex
	p     *mpb.Progress
	bar   *mpb.Bar
	last  time.Time
	files string
	phase build.Phase // the phase the bar shows
}

func newBuildProgress(g *globals, mode progressMode, name string) *buildProgress {
	return &buildProgress{mode: mode, w: g.stderr, name: name}
}

func (b *buildProgress) update(p build.Progress) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.mode {
	case progressNone:
		return
	case progressLines:
		b.line(p)
	case progressBars:
		switch p.Phase {
		case build.PhaseArchive, build.PhaseCompressedRoot:
			if b.bar != nil && b.phase != p.Phase {
				b.finish()
			}
			if b.bar == nil {
				b.phase = p.Phase
				label := b.name + " "
				if p.Phase == build.PhaseCompressedRoot {
					label = b.name + " squashfs "
				}
				b.p = mpb.New(mpb.WithOutput(b.w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
				b.bar = b.p.AddBar(p.TotalBytes,
					mpb.PrependDecorators(decor.Name(label, decor.WCSyncSpaceR), decor.Any(func(decor.Statistics) string { return b.files }, decor.WCSyncSpace)),
					mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
						decor.Name(" ETA "), decor.AverageETA(decor.ET_STYLE_GO)),
				)
			}
			b.files = fmt.Sprintf("%d/%d files", p.Files, p.TotalFiles)
			if p.Bytes > p.TotalBytes {
				b.bar.SetTotal(p.Bytes, false)
			}
			b.bar.SetCurrent(p.Bytes)
		case build.PhaseDone, build.PhaseCached:
			b.finish()
			b.line(p)
		}
	}
}

// line prints p as a line of text, every two seconds at most while
// archiving.
func (b *buildProgress) line(p build.Progress) {
	now := time.Now()
	switch p.Phase {
	case build.PhaseScan:
		fmt.Fprintf(b.w, "%s: reading the source\n", b.name)
	case build.PhaseArchive:
		if now.Sub(b.last) < lineEvery {
			return
		}
		b.last = now
		fmt.Fprintf(b.w, "%s: %d/%d files, %s of %s, %s/s\n", b.name, p.Files, p.TotalFiles, mib(p.Bytes), mib(p.TotalBytes), mib(rate(p.Bytes, p.Elapsed)))
	case build.PhaseCompressedRoot:
		if now.Sub(b.last) < lineEvery {
			return
		}
		b.last = now
		fmt.Fprintf(b.w, "%s: squashfs: %d/%d files, %s of %s\n", b.name, p.Files, p.TotalFiles, mib(p.Bytes), mib(p.TotalBytes))
	case build.PhaseCached:
		fmt.Fprintf(b.w, "%s: unchanged since the last build (%d files): nothing to do, in %s\n", b.name, p.Files, p.Elapsed.Round(time.Millisecond))
	case build.PhaseDone:
		fmt.Fprintf(b.w, "%s: %d files, %s, compressed to %s (%.1f%%), in %s\n", b.name, p.Files, mib(p.Bytes), mib(p.CompressedBytes),
			100*float64(p.CompressedBytes)/float64(max(p.Bytes, 1)), p.Elapsed.Round(time.Millisecond))
	}
}

// finish completes and removes the bar, if any.
func (b *buildProgress) finish() {
	if b.bar != nil {
		b.bar.SetTotal(-1, true)
		b.p.Wait()
		b.bar, b.p = nil, nil
	}
}

// close ends the display after an error.
func (b *buildProgress) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar != nil {
		b.bar.Abort(false)
		b.p.Wait()
		b.bar, b.p = nil, nil
	}
}

// transferProgress shows a push or pull: a bar per blob on a terminal,
// or a line per blob (and every two seconds) otherwise.
type transferProgress struct {
	mode progressMode
	w    io.Writer
	verb string
	mu   sync.Mutex
	p    *mpb.Progress
	bars map[string]*mpb.Bar
	last time.Time
	t0   time.Time
}

func newTransferProgress(g *globals, mode progressMode, verb string) *transferProgress {
	return &transferProgress{mode: mode, w: g.stderr, verb: verb, bars: map[string]*mpb.Bar{}, t0: time.Now()}
}

func (t *transferProgress) update(p push.Progress) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch t.mode {
	case progressNone:
	case progressLines:
		switch {
		case p.Skipped:
			fmt.Fprintf(t.w, "%s %s %s: already there\n", t.verb, p.Blob, p.Digest)
		case p.Done:
			fmt.Fprintf(t.w, "%s %s %s: %s\n", t.verb, p.Blob, p.Digest, mib(p.Bytes))
		case time.Since(t.last) >= lineEvery:
			t.last = time.Now()
			fmt.Fprintf(t.w, "%s %s: %s of %s\n", t.verb, p.Blob, mib(p.Bytes), mib(p.Total))
		}
	case progressBars:
		if p.Skipped {
			fmt.Fprintf(t.w, "%s %s %s: already there\n", t.verb, p.Blob, p.Digest)
			return
		}
		if t.p == nil {
			t.p = mpb.New(mpb.WithOutput(t.w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
		}
		bar := t.bars[p.Blob]
		if bar == nil {
			bar = t.p.AddBar(p.Total,
				mpb.PrependDecorators(decor.Name(t.verb+" "+p.Blob, decor.WCSyncSpaceR)),
				mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f"), decor.Name(" "), decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
					decor.Name(" ETA "), decor.AverageETA(decor.ET_STYLE_GO)),
			)
			t.bars[p.Blob] = bar
		}
		bar.SetCurrent(p.Bytes)
		if p.Done {
			bar.SetTotal(-1, true)
		}
	}
}

func (t *transferProgress) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.p != nil {
		for _, b := range t.bars {
			if !b.Completed() {
				b.Abort(false)
			}
		}
		t.p.Wait()
		t.p = nil
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func rate(n int64, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(float64(n) / d.Seconds())
}
