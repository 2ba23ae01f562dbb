// Package svgplot draws line charts as standalone SVG documents, with
// axes, "nice" ticks, a grid and a legend, and no dependency: the boot
// storm writes its plot of nodes booted over time with it.
//
//	p := svgplot.Plot{Title: "1000 nodes", XLabel: "seconds", YLabel: "nodes",
//		Series: []svgplot.Series{{Name: "dhcp", X: xs, Y: ys}}}
//	err := p.WriteSVG(f)
package svgplot

import (
	"errors"
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Series is one line: points (X[i], Y[i]) joined in order.
type Series struct {
	// Name is its legend entry.
	Name string
	// X and Y are its points; they must have the same length.
	X, Y []float64
	// Dashed draws it dashed.
	Dashed bool
}

// Plot is one chart.
type Plot struct {
	// Title is drawn above the chart.
	Title string
	// XLabel and YLabel name the axes.
	XLabel, YLabel string
	// Width and Height are the document's size in pixels; 0 means 960
	// by 540.
	Width, Height int
	// Series are the lines, drawn in order with the palette's colours.
	Series []Series
	// Note is a line of small text under the chart (the command, the
	// machine).
	Note string
}

// palette is colour-blind-safe (Okabe-Ito, then greys).
var palette = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000", "#999999", "#666666"}

// niceStep returns a step of 1, 2 or 5 times a power of ten that divides
// span into about n intervals.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func label(v, step float64) string {
	if step >= 1 && math.Abs(v) < 1e15 {
		return fmt.Sprintf("%.0f", v)
	}
	dec := int(math.Max(0, -math.Floor(math.Log10(step))))
	return fmt.Sprintf("%.*f", dec, v)
}

// WriteSVG writes the chart to w.
func (p Plot) WriteSVG(w io.Writer) error {
	W, H := p.Width, p.Height
	if W <= 0 || H <= 0 {
		W, H = 960, 540
	}
	const left, right, top, bottom = 70, 170, 44, 64
	pw, ph := float64(W-left-right), float64(H-top-bottom)
	if pw <= 0 || ph <= 0 {
		return errors.New("svgplot: too small")
	}
	xmax, ymax := 0.0, 0.0
	for i, s := range p.Series {
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("svgplot: series %d (%s): %d x values, %d y values", i, s.Name, len(s.X), len(s.Y))
		}
		for j := range s.X {
			if math.IsNaN(s.X[j]) || math.IsNaN(s.Y[j]) || math.IsInf(s.X[j], 0) || math.IsInf(s.Y[j], 0) {
				return fmt.Errorf("svgplot: series %s: point %d is not finite", s.Name, j)
			}
			xmax, ymax = math.Max(xmax, s.X[j]), math.Max(ymax, s.Y[j])
		}
	}
	xstep, ystep := niceStep(xmax, 10), niceStep(ymax, 8)
	xmax = math.Max(xstep, math.Ceil(xmax/xstep)*xstep)
	ymax = math.Max(ystep, math.Ceil(ymax/ystep)*ystep)
	px := func(x float64) float64 { return left + x/xmax*pw }
	py := func(y float64) float64 { return top + ph - y/ymax*ph }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	if p.Title != "" {
		fmt.Fprintf(&b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(p.Title))
	}
	// Grid and ticks.
	b.WriteString(`<g stroke="#e4e4e4">` + "\n")
	for x := 0.0; x <= xmax+xstep/2; x += xstep {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f"/>`+"\n", px(x), top, px(x), top+ph)
	}
	for y := 0.0; y <= ymax+ystep/2; y += ystep {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", left, py(y), left+pw, py(y))
	}
	b.WriteString("</g>\n")
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%.1f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	b.WriteString(`<g fill="#333">` + "\n")
	for x := 0.0; x <= xmax+xstep/2; x += xstep {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(x), top+ph+16, label(x, xstep))
	}
	for y := 0.0; y <= ymax+ystep/2; y += ystep {
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py(y)+4, label(y, ystep))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", left+pw/2, top+ph+36, html.EscapeString(p.XLabel))
	fmt.Fprintf(&b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+ph/2, html.EscapeString(p.YLabel))
	if p.Note != "" {
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" fill="#666">%s</text>`+"\n", left, H-8, html.EscapeString(p.Note))
	}
	b.WriteString("</g>\n")
	// Lines and legend.
	for i, s := range p.Series {
		c := palette[i%len(palette)]
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		if len(s.X) > 0 {
			var pts strings.Builder
			for j := range s.X {
				fmt.Fprintf(&pts, "%.1f,%.1f ", px(s.X[j]), py(s.Y[j]))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", c, dash, strings.TrimSpace(pts.String()))
		}
		ly := float64(top + 8 + 20*i)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", left+pw+14, ly, left+pw+40, ly, c, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", left+pw+46, ly+4, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
