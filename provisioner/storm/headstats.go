package storm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// counterNames are the head metrics whose change over the storm the
// report shows, summed over their labels.
var counterNames = []string{
	"ramboot_dhcp_requests_total",
	"ramboot_dhcp_replies_total",
	"ramboot_dhcp_ignored_total",
	"ramboot_dhcp_socket_drops_total",
	"ramboot_tftp_transfers_total",
	"ramboot_tftp_bytes_total",
	"ramboot_tftp_over_limit_total",
	"ramboot_tftp_socket_drops_total",
	"ramboot_http_boot_bytes_total",
	"ramboot_http_boot_requests_total",
	"ramboot_http_connections_refused_total",
	"ramboot_http_timeouts_total",
	"ramboot_agent_requests_total",
	"ramboot_node_reports_total",
	"ramboot_state_write_failures_total",
}

// Sample is one reading of a head.
type Sample struct {
	// T is seconds since the storm's start.
	T float64 `json:"t"`
	// CPUSeconds is the head's CPU time so far (user and system).
	CPUSeconds float64 `json:"cpuSeconds"`
	// RSSBytes is its resident memory.
	RSSBytes int64 `json:"rssBytes"`
	// Goroutines is its number of goroutines (from /metrics).
	Goroutines int `json:"goroutines"`
	// Threads is its number of OS threads (from /proc).
	Threads int `json:"threads,omitempty"`
	// OpenFDs is its open file descriptors.
	OpenFDs int `json:"openFds,omitempty"`

	counters map[string]float64
	hwm      int64
}

// sampler reads one head's CPU, memory and counters.
type sampler struct {
	head   Head
	client *http.Client
	start  time.Time

	mu      sync.Mutex
	samples []Sample
	errs    int
	lastErr error
}

func newSampler(h Head, start time.Time) *sampler {
	return &sampler{head: h, start: start, client: &http.Client{Timeout: 5 * time.Second}}
}

// sample takes one reading and keeps it.
func (s *sampler) sample(ctx context.Context) Sample {
	smp := Sample{T: time.Since(s.start).Seconds(), counters: map[string]float64{}}
	var errs []error
	if s.head.PID > 0 {
		if err := readProc(s.head.PID, &smp); err != nil {
			errs = append(errs, err)
		}
	}
	if s.head.Metrics != "" {
		if err := s.scrape(ctx, &smp); err != nil {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(errs) > 0 {
		s.errs++
		s.lastErr = errs[0]
	}
	s.samples = append(s.samples, smp)
	return smp
}

// scrape reads the head's /metrics.
func (s *sampler) scrape(ctx context.Context, smp *Sample) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.head.Metrics, nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("scrape %s: %w", s.head.Metrics, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape %s: %s", s.head.Metrics, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("scrape %s: %w", s.head.Metrics, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("scrape %s: %w", s.head.Metrics, err)
	}
	sum := func(name string) (float64, bool) {
		f, ok := fams[name]
		if !ok {
			return 0, false
		}
		var v float64
		for _, m := range f.GetMetric() {
			switch {
			case m.Counter != nil:
				v += m.GetCounter().GetValue()
			case m.Gauge != nil:
				v += m.GetGauge().GetValue()
			case m.Untyped != nil:
				v += m.GetUntyped().GetValue()
			}
		}
		return v, true
	}
	if s.head.PID <= 0 {
		if v, ok := sum("process_cpu_seconds_total"); ok {
			smp.CPUSeconds = v
		}
		if v, ok := sum("process_resident_memory_bytes"); ok {
			smp.RSSBytes = int64(v)
		}
		if v, ok := sum("process_open_fds"); ok {
			smp.OpenFDs = int(v)
		}
	}
	if v, ok := sum("go_goroutines"); ok {
		smp.Goroutines = int(v)
	}
	for _, n := range counterNames {
		if v, ok := sum(n); ok {
			smp.counters[n] = v
		}
	}
	return nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture the head runs on.
const clockTicks = 100

// readProc reads CPU time, resident memory (and its peak), threads and
// open descriptors from /proc/PID.
func readProc(pid int, smp *Sample) error {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return fmt.Errorf("read head process %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces: fields count from
	// after its closing parenthesis.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return fmt.Errorf("read head process %d: malformed stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return fmt.Errorf("read head process %d: short stat", pid)
	}
	utime, _ := strconv.ParseFloat(f[11], 64) // field 14
	stime, _ := strconv.ParseFloat(f[12], 64) // field 15
	smp.CPUSeconds = (utime + stime) / clockTicks
	threads, _ := strconv.Atoi(f[17]) // field 20
	smp.Threads = threads
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("read head process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			smp.RSSBytes = kb << 10
		case "VmHWM":
			smp.hwm = kb << 10
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		smp.OpenFDs = len(ents)
	}
	return nil
}

// run samples every interval until ctx ends.
func (s *sampler) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample(ctx)
		}
	}
}

// HeadReport is how one head held up.
type HeadReport struct {
	// Name names the head.
	Name string `json:"name"`
	// Nodes counts the nodes whose DHCP it answered.
	Nodes int `json:"nodes"`
	// CPUSeconds is the CPU time it used during the storm.
	CPUSeconds float64 `json:"cpuSeconds"`
	// CoresMean and CoresPeak are its CPU use in cores: over the storm,
	// and the highest over one sampling interval.
	CoresMean float64 `json:"coresMean"`
	CoresPeak float64 `json:"coresPeak"`
	// RSSStart, RSSPeak and RSSEnd are its resident memory before, at the
	// peak and after the storm (the nodes' connections closed).
	RSSStart int64 `json:"rssStartBytes"`
	RSSPeak  int64 `json:"rssPeakBytes"`
	RSSEnd   int64 `json:"rssEndBytes"`
	// HWM is the process's peak resident memory since it started (VmHWM;
	// 0 when the head is not local).
	HWM int64 `json:"hwmBytes,omitempty"`
	// GoroutinesStart, GoroutinesPeak and GoroutinesEnd count its
	// goroutines before, at the peak and after the storm.
	GoroutinesStart int `json:"goroutinesStart"`
	GoroutinesPeak  int `json:"goroutinesPeak"`
	GoroutinesEnd   int `json:"goroutinesEnd"`
	// ThreadsPeak and FDsPeak are its most OS threads and open files.
	ThreadsPeak int `json:"threadsPeak,omitempty"`
	FDsPeak     int `json:"fdsPeak,omitempty"`
	// Counters are the changes of its ramboot_* counters over the storm.
	Counters map[string]float64 `json:"counters,omitempty"`
	// Samples are the readings, for plots.
	Samples []Sample `json:"samples,omitempty"`
	// Error is the last sampling error, if any reading failed.
	Error string `json:"error,omitempty"`
}

// report sums the samples: first is the reading before the storm, end the
// one after.
func (s *sampler) report(first, end Sample, stormSeconds float64) HeadReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	hr := HeadReport{Name: s.head.Name, Samples: s.samples,
		RSSStart: first.RSSBytes, RSSEnd: end.RSSBytes, HWM: end.hwm,
		GoroutinesStart: first.Goroutines, GoroutinesEnd: end.Goroutines,
		CPUSeconds: end.CPUSeconds - first.CPUSeconds}
	if stormSeconds > 0 {
		hr.CoresMean = hr.CPUSeconds / stormSeconds
	}
	for i, smp := range s.samples {
		hr.RSSPeak = max(hr.RSSPeak, smp.RSSBytes)
		hr.GoroutinesPeak = max(hr.GoroutinesPeak, smp.Goroutines)
		hr.ThreadsPeak = max(hr.ThreadsPeak, smp.Threads)
		hr.FDsPeak = max(hr.FDsPeak, smp.OpenFDs)
		if i > 0 {
			if dt := smp.T - s.samples[i-1].T; dt > 0 {
				hr.CoresPeak = max(hr.CoresPeak, (smp.CPUSeconds-s.samples[i-1].CPUSeconds)/dt)
			}
		}
	}
	if len(end.counters) > 0 {
		hr.Counters = map[string]float64{}
		for k, v := range end.counters {
			hr.Counters[strings.TrimPrefix(k, "ramboot_")] = v - first.counters[k]
		}
	}
	if s.lastErr != nil {
		hr.Error = fmt.Sprintf("%d readings failed; last: %v", s.errs, s.lastErr)
	}
	return hr
}
