package state

import (
	"encoding/json"
	"strconv"
	"time"
)

// The status writer encodes a node's whole status record for every group
// of boot events it commits (a firmware's DHCP exchange is two of them);
// with encoding/json's reflection that was the writer's largest cost
// after the commit itself. encodeStatus and encodeBoot write the same
// bytes json.Marshal writes for these types, by hand; the rare parts
// (the agent's report, a string that needs escaping, a time outside
// RFC 3339) go through encoding/json, so the output is json.Marshal's
// exactly (TestEncodeMatchesJSON compares them): records written by
// either decode the same, and stores written before read unchanged.

// encodeStatus returns s as json.Marshal encodes it.
func encodeStatus(s *statusRecord) ([]byte, error) {
	b := make([]byte, 0, 256+160*len(s.Status.Timeline))
	b = append(b, `{"status":`...)
	b, err := appendStatus(b, &s.Status)
	if err != nil {
		return nil, err
	}
	if s.BootNonce != "" {
		b = append(b, `,"bootNonce":`...)
		b = appendString(b, s.BootNonce)
	}
	if s.TokenHash != "" {
		b = append(b, `,"tokenHash":`...)
		b = appendString(b, s.TokenHash)
	}
	if s.TokenBoot != 0 {
		b = append(b, `,"tokenBoot":`...)
		b = strconv.AppendInt(b, int64(s.TokenBoot), 10)
	}
	return append(b, '}'), nil
}

// encodeBoot returns bt as json.Marshal encodes it (an archived boot).
func encodeBoot(bt *Boot) ([]byte, error) {
	b := make([]byte, 0, 128+160*len(bt.Timeline))
	b, err := appendBootFields(append(b, '{'), bt)
	if err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

func appendStatus(b []byte, st *Status) ([]byte, error) {
	b, err := appendBootFields(append(b, '{'), &st.Boot)
	if err != nil {
		return nil, err
	}
	b = append(b, `,"boots":`...)
	b = strconv.AppendInt(b, int64(st.Boots), 10)
	if len(st.History) > 0 {
		b = append(b, `,"history":[`...)
		for i, id := range st.History {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(id), 10)
		}
		b = append(b, ']')
	}
	if p := st.Pin; p != nil {
		b = append(b, `,"pin":{"ref":`...)
		b = appendString(b, p.Ref)
		b = append(b, `,"digest":`...)
		b = appendString(b, p.Digest)
		if p.Boot != 0 {
			b = append(b, `,"boot":`...)
			b = strconv.AppendInt(b, int64(p.Boot), 10)
		}
		b = append(b, '}')
	}
	return append(b, '}'), nil
}

// appendBootFields appends bt's fields, without the braces (Status
// embeds them).
func appendBootFields(b []byte, bt *Boot) ([]byte, error) {
	var err error
	b = append(b, `"boot":`...)
	b = strconv.AppendInt(b, int64(bt.ID), 10)
	if !bt.Started.IsZero() {
		b = append(b, `,"started":`...)
		if b, err = appendTime(b, bt.Started); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"state":`...)
	b = appendString(b, string(bt.State))
	b = append(b, `,"timeline":`...)
	if bt.Timeline == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range bt.Timeline {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = appendEvent(b, &bt.Timeline[i]); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	}
	if bt.Report != nil {
		r, err := json.Marshal(bt.Report)
		if err != nil {
			return nil, err
		}
		b = append(b, `,"report":`...)
		b = append(b, r...)
	}
	return b, nil
}

func appendEvent(b []byte, e *Event) ([]byte, error) {
	var err error
	b = append(b, `{"time":`...)
	if b, err = appendTime(b, e.Time); err != nil {
		return nil, err
	}
	b = append(b, `,"step":`...)
	b = appendString(b, string(e.Step))
	if e.Detail != "" {
		b = append(b, `,"detail":`...)
		b = appendString(b, e.Detail)
	}
	if e.Head != "" {
		b = append(b, `,"head":`...)
		b = appendString(b, e.Head)
	}
	if e.XID != 0 {
		b = append(b, `,"xid":`...)
		b = strconv.AppendUint(b, uint64(e.XID), 10)
	}
	return append(b, '}'), nil
}

// appendTime appends t as time.Time's MarshalJSON does (RFC 3339 with
// nanoseconds, refused outside what RFC 3339 can say).
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return nil, err
	}
	return append(b, '"'), nil
}

// appendString appends s as encoding/json quotes it: printable ASCII
// that needs no escape (encoding/json escapes <, > and & too) as is,
// anything else through encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
