package storm

import (
	"fmt"
	"io"

	"github.com/ramboot/ramboot/provisioner/storm/internal/svgplot"
)

// maxPlotPoints bounds each line of the plot: a 10,000-node storm stays a
// small document.
const maxPlotPoints = 600

// WriteSVG plots the nodes that finished each phase over time, one line
// per phase, as an SVG document; note is printed under the chart (the
// command that made it, say).
func (rep *Report) WriteSVG(w io.Writer, note string) error {
	p := svgplot.Plot{
		Title:  fmt.Sprintf("Boot storm: %d nodes, %s firmware, until %s (%d lost)", rep.Nodes, rep.Firmware, rep.Until, rep.Lost),
		XLabel: "seconds since the first power-on",
		YLabel: "nodes that finished the phase",
		Note:   note,
	}
	for _, ph := range rep.Phases {
		ts := rep.Timeline[ph.Name]
		s := svgplot.Series{Name: ph.Name, X: []float64{0}, Y: []float64{0}}
		step := max(1, len(ts)/maxPlotPoints)
		for i := 0; i < len(ts); i += step {
			s.X, s.Y = append(s.X, ts[i]), append(s.Y, float64(i+1))
		}
		if n := len(ts); n > 0 && s.Y[len(s.Y)-1] != float64(n) {
			s.X, s.Y = append(s.X, ts[n-1]), append(s.Y, float64(n))
		}
		s.Dashed = ph.Name == PhaseRegister.String()
		p.Series = append(p.Series, s)
	}
	return p.WriteSVG(w)
}
