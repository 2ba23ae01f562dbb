package svgplot

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"
)

func TestWriteSVG(t *testing.T) {
	p := Plot{Title: "nodes <booted> & more", XLabel: "seconds", YLabel: "nodes", Note: "cmd",
		Series: []Series{
			{Name: "dhcp", X: []float64{0, 1, 2.5}, Y: []float64{0, 500, 1000}},
			{Name: "register", X: []float64{0, 3, 7.2}, Y: []float64{0, 10, 1000}, Dashed: true},
			{Name: "empty"},
		}}
	var b strings.Builder
	if err := p.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// Well-formed XML, escaped text, one polyline per non-empty series.
	dec := xml.NewDecoder(strings.NewReader(out))
	for {
		_, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v\n%s", err, out)
		}
	}
	for _, want := range []string{"nodes &lt;booted&gt; &amp; more", ">register<", `stroke-dasharray="6 4"`, ">1000<", ">8<"} {
		if !strings.Contains(out, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if n := strings.Count(out, "<polyline"); n != 2 {
		t.Errorf("%d polylines, want 2", n)
	}
}

func TestWriteSVGRefuses(t *testing.T) {
	for name, p := range map[string]Plot{
		"uneven": {Series: []Series{{Name: "a", X: []float64{1}, Y: nil}}},
		"nan":    {Series: []Series{{Name: "a", X: []float64{0}, Y: []float64{nan()}}}},
		"tiny":   {Width: 100, Height: 50},
	} {
		if err := p.WriteSVG(io.Discard); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func nan() float64 {
	var z float64
	return z / z
}

func TestNiceStep(t *testing.T) {
	for _, c := range []struct {
		span float64
		n    int
		want float64
	}{{100, 10, 10}, {73, 10, 10}, {1000, 8, 200}, {7.2, 10, 1}, {0.3, 10, 0.05}, {0, 10, 1}} {
		if got := niceStep(c.span, c.n); got != c.want {
			t.Errorf("niceStep(%v, %d) = %v, want %v", c.span, c.n, got, c.want)
		}
	}
}
