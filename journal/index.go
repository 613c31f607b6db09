package journal

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/sluicemail/sluice/internal/durable"
)

// Index keys are 64-bit FNV-1a hashes of a namespace byte and a string:
// 'q' queue ID (every event), 'm' Message-ID (accepted events, and the
// provider's ID from a delivered event's 250 reply), 'a' address (the
// sender and recipients of accepted events, the recipient of outcome
// events). A hash may collide, so every hit is checked against the event.
const (
	nsQueue   = 'q'
	nsMessage = 'm'
	nsAddr    = 'a'
)

func hashKey(ns byte, s string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	h ^= uint64(ns)
	h *= prime
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime
	}
	return h
}

// eventKeys appends the index keys of e to ks.
func eventKeys(ks []uint64, e *Event) []uint64 {
	if e.QueueID != "" {
		ks = append(ks, hashKey(nsQueue, e.QueueID))
	}
	if e.Event == Accepted || e.QueueID == "" {
		if e.MessageID != "" {
			ks = append(ks, hashKey(nsMessage, e.MessageID))
		}
		if e.Sender != "" {
			ks = append(ks, hashKey(nsAddr, normAddr(e.Sender)))
		}
		for _, r := range e.Recipients {
			ks = append(ks, hashKey(nsAddr, normAddr(r)))
		}
	}
	if e.Recipient != "" && e.Event != Attempt {
		ks = append(ks, hashKey(nsAddr, normAddr(e.Recipient)))
	}
	if e.Event == Delivered {
		if tok := providerToken(e.Text); tok != "" {
			ks = append(ks, hashKey(nsMessage, tok))
		}
	}
	return ks
}

// providerToken returns the ID a provider put in its 250 reply ("250 Ok
// 0100018c…-000000" from SES, "queued as X" elsewhere): the last word,
// when it is long enough and has a digit. Provider webhooks name messages
// by it.
func providerToken(text string) string {
	f := strings.Fields(text)
	if len(f) == 0 {
		return ""
	}
	tok := strings.Trim(f[len(f)-1], "<>[]().,;")
	if len(tok) < 8 || !strings.ContainsAny(tok, "0123456789") {
		return ""
	}
	return tok
}

func decodeLine(line []byte, e *Event) error {
	return json.Unmarshal(line, e)
}

type idxHead struct {
	size, minT, maxT int64
	n                uint32
}

// writeIdx writes s's entries, sorted, to path: a temp file, fsync'd,
// renamed. The directory fsync is left to the next one: a lost .idx is
// rebuilt by scanning at the next Open, and readers scan without it.
func writeIdx(path string, s *segment) error {
	idx := slices.Clone(s.idx)
	slices.SortFunc(idx, func(a, b entry) int {
		if c := cmpUint(a.h, b.h); c != 0 {
			return c
		}
		return cmpUint(uint64(a.off), uint64(b.off))
	})
	buf := make([]byte, idxHeader+entrySize*len(idx))
	copy(buf, idxMagic)
	binary.BigEndian.PutUint64(buf[8:], uint64(s.minT))
	binary.BigEndian.PutUint64(buf[16:], uint64(s.maxT))
	binary.BigEndian.PutUint32(buf[24:], uint32(len(idx)))
	p := buf[idxHeader:]
	for i, e := range idx {
		binary.BigEndian.PutUint64(p[i*entrySize:], e.h)
		binary.BigEndian.PutUint32(p[i*entrySize+8:], e.off)
	}
	if err := durable.WriteFile(path, buf); err != nil {
		return fmt.Errorf("journal: write index: %w", err)
	}
	return nil
}

var errBadIdx = errors.New("journal: bad index file")

func readIdxHeader(path string) (idxHead, error) {
	f, err := os.Open(path)
	if err != nil {
		return idxHead{}, err
	}
	defer f.Close()
	var b [idxHeader]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return idxHead{}, errBadIdx
	}
	h, err := parseIdxHeader(b[:])
	if err != nil {
		return h, err
	}
	st, err := f.Stat()
	if err != nil {
		return h, err
	}
	if st.Size() != idxHeader+entrySize*int64(h.n) {
		return h, errBadIdx
	}
	h.size = st.Size()
	return h, nil
}

func parseIdxHeader(b []byte) (idxHead, error) {
	if string(b[:8]) != idxMagic {
		return idxHead{}, errBadIdx
	}
	return idxHead{
		minT: int64(binary.BigEndian.Uint64(b[8:])),
		maxT: int64(binary.BigEndian.Uint64(b[16:])),
		n:    binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// idxFile is an open sealed index, searched with binary search by pread.
type idxFile struct {
	f *os.File
	n uint32
}

func openIdx(path string) (*idxFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var b [idxHeader]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		f.Close()
		return nil, errBadIdx
	}
	h, err := parseIdxHeader(b[:])
	if err != nil {
		f.Close()
		return nil, err
	}
	return &idxFile{f: f, n: h.n}, nil
}

func (x *idxFile) at(i uint32) (entry, error) {
	var b [entrySize]byte
	if _, err := x.f.ReadAt(b[:], idxHeader+int64(i)*entrySize); err != nil {
		return entry{}, err
	}
	return entry{h: binary.BigEndian.Uint64(b[:]), off: binary.BigEndian.Uint32(b[8:])}, nil
}

// find returns the offsets of every entry with hash h.
func (x *idxFile) find(h uint64) ([]uint32, error) {
	lo, hi := uint32(0), x.n
	for lo < hi {
		mid := lo + (hi-lo)/2
		e, err := x.at(mid)
		if err != nil {
			return nil, err
		}
		if e.h < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	// The matches follow lo; read them in blocks (a common sender may
	// have many).
	var offs []uint32
	buf := make([]byte, 64*entrySize)
	for i := lo; i < x.n; {
		k := min(x.n-i, 64)
		b := buf[:k*entrySize]
		if _, err := x.f.ReadAt(b, idxHeader+int64(i)*entrySize); err != nil {
			return offs, err
		}
		for j := uint32(0); j < k; j++ {
			if binary.BigEndian.Uint64(b[j*entrySize:]) != h {
				return offs, nil
			}
			offs = append(offs, binary.BigEndian.Uint32(b[j*entrySize+8:]))
		}
		i += k
	}
	return offs, nil
}
