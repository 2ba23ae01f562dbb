package apiclient

import (
	"context"
	"net/http"
	"net/url"

	"github.com/ramboot/ramboot/provisioner/api"
)

// GetImage returns one image reference with the nodes assigned it.
func (c *Client) GetImage(ctx context.Context, ref string) (api.Image, error) {
	var img api.Image
	err := c.do(ctx, http.MethodGet, "/api/v1/images/"+url.PathEscape(ref), nil, &img)
	return img, err
}

// TagImage makes tag point to the image ref points to.
func (c *Client) TagImage(ctx context.Context, ref, tag string) (api.Image, error) {
	var img api.Image
	err := c.do(ctx, http.MethodPost, "/api/v1/images/"+url.PathEscape(ref)+"/tags", api.TagRequest{Tag: tag}, &img)
	return img, err
}

// DeleteImage removes the reference ref; the daemon refuses while nodes
// are assigned it, unless force.
func (c *Client) DeleteImage(ctx context.Context, ref string, force bool) error {
	p := "/api/v1/images/" + url.PathEscape(ref)
	if force {
		p += "?force=true"
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil)
}

// GCImages removes (or, with req.DryRun, lists) the blobs no reference
// and no node uses.
func (c *Client) GCImages(ctx context.Context, req api.GCRequest) (api.GCResponse, error) {
	var res api.GCResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/images/gc", req, &res)
	return res, err
}
