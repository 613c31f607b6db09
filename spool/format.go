package spool

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"time"
)

// On-disk layout (docs/queue.md): Dir/msg/<ID>.tmp is a draft; Dir/msg/<ID>
// is a committed message, immutable: the message bytes, then a JSON trailer
// (envelope and DKIM prefix), then a fixed footer. Dir/msg/<ID>.st is the
// message's append-only state log (one JSON record per line).
// Dir/msg/.free-<ID> is an empty file kept to be reused by a draft.

const (
	footerMagic = "SLUICEQ1"
	footerSize  = 8 + 8 + 4 + 4 // magic, message length, trailer length, trailer CRC-32C
	tmpSuffix   = ".tmp"
	stateSuffix = ".st"
	freePrefix  = ".free-"
	probePrefix = ".probe-"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Envelope is what the relay knows about a message besides its bytes; it is
// stored in the message file's trailer.
type Envelope struct {
	ID        string    `json:"id"`
	MessageID string    `json:"message_id,omitempty"` // the header's, without <> (for the journal)
	From      string    `json:"from"`                 // "" = null sender
	To        []string  `json:"to"`
	User      string    `json:"user,omitempty"`   // authenticated user, "" when accepted by network
	Client    string    `json:"client,omitempty"` // client IP
	Route     []string  `json:"route,omitempty"`  // upstream names (empty: all), fixed at acceptance
	Received  time.Time `json:"received"`

	// DSN parameters (RFC 3461).
	Ret      string             `json:"ret,omitempty"`   // "FULL" | "HDRS" | ""
	EnvID    string             `json:"envid,omitempty"` // ENVID, echoed as Original-Envelope-Id
	RcptOpts map[string]RcptDSN `json:"rcpt_opts,omitempty"`
	// RequireTLS (RFC 8689): deliver only over TLS-only upstreams.
	RequireTLS bool `json:"requiretls,omitempty"`
	// SMTPUTF8 (RFC 6531): the message needs it (a UTF-8 address, or UTF-8
	// headers from a client that declared it); only upstreams that offer
	// it may carry the message.
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
	// Bounce marks a DSN made by the queue; its own failures are dropped.
	Bounce bool `json:"bounce,omitempty"`
}

// RcptDSN holds one recipient's DSN parameters, keyed by the address in To.
type RcptDSN struct {
	Notify []string `json:"notify,omitempty"` // NEVER | SUCCESS, FAILURE, DELAY; empty: FAILURE,DELAY
	ORCPT  string   `json:"orcpt,omitempty"`  // "rfc822;addr" as the client sent it
}

// trailer is the JSON part of a committed message file.
type trailer struct {
	V   int       `json:"v"`
	Env *Envelope `json:"env"`
	// Slot and CRC are set when the message was written over a free file
	// (Commit into a slot): the ID in the free file's name, and the
	// CRC-32C of the message bytes. Recovery takes such a file, still
	// under its free name, for this message only when both match
	// (recoverSlots). Prefix stays last (withoutPrefix).
	Slot   string `json:"slot,omitempty"`
	CRC    uint32 `json:"crc,omitempty"`
	Prefix []byte `json:"prefix,omitempty"` // DKIM-Signature fields, prepended on delivery

	size int64 // the file's length (readTrailer)
}

// crockford is a sortable, case-free alphabet safe in file names.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewID returns 16 characters: 10 for the microseconds since the epoch (sorts
// by time until the year 2514) and 6 random (30 bits), so IDs made in the
// same microsecond differ; Begin's O_EXCL catches the rest.
func NewID(now time.Time) string {
	var b [16]byte
	us := uint64(now.UnixMicro())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[us&31]
		us >>= 5
	}
	var r [4]byte
	rand.Read(r[:])
	x := binary.BigEndian.Uint32(r[:])
	for i := 15; i >= 10; i-- {
		b[i] = crockford[x&31]
		x >>= 5
	}
	return string(b[:])
}

// ValidID reports whether s could be a queue ID (and so is safe in a path).
func ValidID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune(crockford, rune(s[i])) {
			return false
		}
	}
	return true
}

// encodeTail returns the trailer and footer that follow msgLen message bytes
// (slot and crc: see trailer). The trailer is at least minLen bytes: spaces
// before its JSON (which JSON allows) make up the difference, so a message
// written over a slightly longer free file ends where the old content did
// (Commit).
func encodeTail(env *Envelope, prefix []byte, msgLen int64, slot string, crc uint32, minLen int) ([]byte, error) {
	js, err := json.Marshal(trailer{V: 1, Env: env, Slot: slot, CRC: crc, Prefix: prefix})
	if err != nil {
		return nil, err
	}
	tr := js
	if pad := minLen - len(js); pad > 0 {
		tr = make([]byte, pad, minLen+footerSize)
		for i := range tr {
			tr[i] = ' '
		}
		tr = append(tr, js...)
	}
	var foot [footerSize]byte
	copy(foot[:8], footerMagic)
	binary.BigEndian.PutUint64(foot[8:], uint64(msgLen))
	binary.BigEndian.PutUint32(foot[16:], uint32(len(tr)))
	binary.BigEndian.PutUint32(foot[20:], crc32.Checksum(tr, castagnoli))
	return append(tr, foot[:]...), nil
}

// ErrCorrupt marks a file that cannot be a committed message.
var ErrCorrupt = errors.New("corrupt spool file")

// readTrailer reads the envelope and prefix of a committed message file and
// returns the length of the message bytes before them.
func readTrailer(f File) (*trailer, int64, error) {
	buf, msgLen, err := readTail(f)
	if err != nil {
		return nil, 0, err
	}
	var tr trailer
	if err := json.Unmarshal(buf, &tr); err != nil || tr.Env == nil {
		return nil, 0, fmt.Errorf("%w: trailer: %v", ErrCorrupt, err)
	}
	tr.size = msgLen + int64(len(buf)) + footerSize
	return &tr, msgLen, nil
}

// readEnvelope is readTrailer without the DKIM prefix, for recovery: the
// prefix (base64, last in the trailer) is cut off before decoding rather
// than scanned twice and decoded.
func readEnvelope(f File) (*Envelope, int64, int, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, 0, err
	}
	return readEnvelopeAt(f, st.Size())
}

// readEnvelopeAt is readEnvelope over a file of size bytes read with r. It
// returns the envelope, the length of the message bytes and that of the
// prefix it did not decode.
func readEnvelopeAt(r io.ReaderAt, size int64) (*Envelope, int64, int, error) {
	buf, msgLen, err := readTailAt(r, size)
	if err != nil {
		return nil, 0, 0, err
	}
	var tr struct {
		Env *Envelope `json:"env"`
	}
	cut, prefixLen := withoutPrefix(buf)
	if err := json.Unmarshal(cut, &tr); err != nil || tr.Env == nil {
		return nil, 0, 0, fmt.Errorf("%w: trailer: %v", ErrCorrupt, err)
	}
	return tr.Env, msgLen, prefixLen, nil
}

// withoutPrefix returns the trailer tr without its final "prefix" member
// when it ends with one ({…,"prefix":"BASE64"}), else tr, and the length
// of the prefix that BASE64 encodes (0 without one). A match can only be
// the top level's last member: after one inside a string or inside the
// envelope, more than base64 would follow.
func withoutPrefix(tr []byte) ([]byte, int) {
	const key = `,"prefix":"`
	i := bytes.LastIndex(tr, []byte(key))
	if i < 0 || !bytes.HasSuffix(tr, []byte(`"}`)) {
		return tr, 0
	}
	b64 := tr[i+len(key) : len(tr)-2]
	for _, c := range b64 {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/' || c == '=') {
			return tr, 0
		}
	}
	n := len(b64) / 4 * 3
	for j := len(b64) - 1; j >= 0 && b64[j] == '='; j-- {
		n--
	}
	out := tr[:i+1]
	out[i] = '}'
	return out, n
}

// tailRead is how much of a message file's end readTail reads at once:
// the footer and, in one system call, a trailer of usual size.
const tailRead = 4096

// readTail returns the checked JSON trailer of a committed message file
// and the length of the message bytes before it.
func readTail(f File) ([]byte, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	return readTailAt(f, st.Size())
}

// readTailAt is readTail over a file of size bytes read with r.
func readTailAt(f io.ReaderAt, size int64) ([]byte, int64, error) {
	if size < footerSize {
		return nil, 0, fmt.Errorf("%w: %d bytes, shorter than the footer", ErrCorrupt, size)
	}
	end := make([]byte, min(size, tailRead))
	if _, err := f.ReadAt(end, size-int64(len(end))); err != nil {
		return nil, 0, err
	}
	foot := end[len(end)-footerSize:]
	if string(foot[:8]) != footerMagic {
		return nil, 0, fmt.Errorf("%w: bad footer magic", ErrCorrupt)
	}
	msgLen := int64(binary.BigEndian.Uint64(foot[8:]))
	trLen := int64(binary.BigEndian.Uint32(foot[16:]))
	if msgLen < 0 || msgLen+trLen+footerSize != size {
		return nil, 0, fmt.Errorf("%w: lengths %d+%d+%d do not add up to %d", ErrCorrupt, msgLen, trLen, footerSize, size)
	}
	var buf []byte
	if trLen+footerSize <= int64(len(end)) {
		buf = end[len(end)-footerSize-int(trLen) : len(end)-footerSize]
	} else {
		buf = make([]byte, trLen)
		if _, err := f.ReadAt(buf, msgLen); err != nil {
			return nil, 0, err
		}
	}
	if crc32.Checksum(buf, castagnoli) != binary.BigEndian.Uint32(foot[20:]) {
		return nil, 0, fmt.Errorf("%w: trailer checksum mismatch", ErrCorrupt)
	}
	return buf, msgLen, nil
}

// body returns prefix + the first msgLen bytes of f as one reader.
func body(prefix []byte, f io.ReaderAt, msgLen int64) io.Reader {
	return io.MultiReader(bytes.NewReader(prefix), io.NewSectionReader(f, 0, msgLen))
}

// Record is one line of a message's state log.
type Record struct {
	T        string    `json:"t"` // attempt | rcpt | hold | release | retry | warned; flush | boot (Dir/events only)
	At       time.Time `json:"at"`
	N        int       `json:"n,omitempty"`    // attempt: its number
	Next     time.Time `json:"next,omitzero"`  // attempt: when the next one is due
	Rcpt     string    `json:"rcpt,omitempty"` // rcpt: address
	State    string    `json:"state,omitempty"`
	Upstream string    `json:"upstream,omitempty"`
	Status   string    `json:"status,omitempty"` // enhanced status, e.g. 5.1.1
	Diag     string    `json:"diag,omitempty"`   // diagnostic text (the upstream's reply)
}

// Recipient states.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateBounced   = "bounced"
	StateExpired   = "expired"
	StateDeferred  = "deferred" // in the log: still pending, with a last error
)

func encodeRecords(recs []Record) ([]byte, error) {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}

// parseRecords reads a state log. A torn last line (crash mid-append) is
// ignored: it was never synced, so nothing relied on it.
func parseRecords(b []byte) []Record {
	var recs []Record
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r Record
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		recs = append(recs, r)
	}
	return recs
}

// State is a message's state folded from its log.
type State struct {
	Attempts int
	Next     time.Time
	Held     bool
	Warned   bool
	LastErr  string
	Rcpt     map[string]Record // final or deferred outcome per recipient
	// Flushed is the time of a flush whose attempt is not recorded yet and
	// that no start of a process followed (zero: none): the process that
	// made it may make that attempt unrecorded (Spool.AttemptCovered).
	Flushed time.Time
}

// Fold folds a state log into a State.
func Fold(recs []Record) State {
	s := State{Rcpt: map[string]Record{}}
	for _, r := range recs {
		switch r.T {
		case "attempt":
			s.Attempts = max(s.Attempts, r.N)
			s.Next = r.Next
			s.Flushed = time.Time{}
		case "rcpt":
			if r.State == StateDeferred {
				s.LastErr = r.Diag
			}
			if old, ok := s.Rcpt[r.Rcpt]; ok && old.State != StateDeferred {
				continue // a final outcome stays final
			}
			s.Rcpt[r.Rcpt] = r
		case "hold":
			s.Held = true
		case "release":
			s.Held = false
			s.Next = r.At
		case "retry":
			s.Next = r.At
		case "flush": // Dir/events: due now; the advance record of its next attempt (events.go)
			s.Next = r.At
			if !s.Held {
				s.Flushed = r.At
			}
		case "boot": // Dir/events: a flush's attempt before it may have been made
			if !s.Flushed.IsZero() {
				s.Attempts = max(s.Attempts, 1) + 1 // 1: the unrecorded first attempt
				s.Flushed = time.Time{}
			}
		case "warned":
			s.Warned = true
		}
	}
	return s
}

// RcptState returns the recipient's state name for listings.
func (s State) RcptState(addr string) string {
	r, ok := s.Rcpt[addr]
	if !ok || r.State == StateDeferred {
		return StatePending
	}
	return r.State
}

// readAll reads a whole file through fsys (nil, nil when it does not exist).
func readAll(fsys FS, path string) ([]byte, error) {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
