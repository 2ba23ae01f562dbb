package headapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/ramboot/ramboot/images/overlay"
)

// Image resolves an image reference ("name", "name:tag" or a manifest
// digest) in the head's store (overlay.ImagePath). An unknown image is a
// *StatusError with Code 404.
func (c *Client) Image(ctx context.Context, ref string) (overlay.NodeImage, error) {
	var img overlay.NodeImage
	route := strings.ReplaceAll(overlay.ImagePath, "{ref}", url.PathEscape(ref))
	err := c.do(ctx, http.MethodGet, route, true, nil, &img)
	return img, err
}

// JobEvent records a scheduler job's prolog or epilog in the node's
// timeline on the head (overlay.JobEventPath).
func (c *Client) JobEvent(ctx context.Context, ev overlay.JobEvent) error {
	return c.do(ctx, http.MethodPost, overlay.JobEventPath, true, ev, nil)
}

// Download opens the head's file at path, relative to the head's URL (an
// image's root file system, overlay.NodeImage.RootfsPath). The boot routes
// are public: no token is sent. Only ctx bounds the transfer (not
// AttemptTimeout: an image takes what it takes); the caller closes the
// body and checks what it read. A head that does not answer is passed
// over for the next of the configuration's peers, as by every call.
func (c *Client) Download(ctx context.Context, path string) (io.ReadCloser, error) {
	var resp *http.Response
	err := c.onHeads(ctx, func(cfg overlay.Config) error {
		u := strings.TrimRight(cfg.HeadURL, "/") + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return fmt.Errorf("GET %s: %w", u, err)
		}
		if resp, err = c.send(req); err != nil {
			return fmt.Errorf("GET %s: %w", u, err) // no answer: the next head
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, &StatusError{Route: path, Code: resp.StatusCode, Message: resp.Status}
	}
	return resp.Body, nil
}
