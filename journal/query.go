package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Message is what the journal knows of an accepted message: enough to
// match a provider's report to its queue ID, sender and recipients.
type Message struct {
	QueueID    string
	MessageID  string
	Sender     string
	Recipients []string
	Time       time.Time // accepted
}

// Trail is one message's events, oldest first.
type Trail struct {
	QueueID   string
	MessageID string
	Sender    string
	Subject   string
	Events    []Event
}

// MaxTrails bounds one trace: when more messages match (a busy sender's
// address), the newest MaxTrails are returned and Truncated says so.
const MaxTrails = 1000

// Result is the answer to a trace.
type Result struct {
	Trails    []Trail
	Truncated bool
}

// view is one segment as a query sees it: a sealed index file, or index
// entries in memory (the daemon's active segment, or a scanned one).
type view struct {
	seq        uint64
	log, idx   string
	mem        []entry
	scan       bool // no index: read the whole log (a segment being written by a daemon)
	minT, maxT int64
}

// query holds the files one trace or lookup opened.
type query struct {
	views []view
	logs  map[uint64]*os.File
	idxs  map[uint64]*idxFile
	data  map[uint64][]byte // scanned segments' contents
}

func newQuery(views []view) *query {
	return &query{views: views, logs: map[uint64]*os.File{}, idxs: map[uint64]*idxFile{}, data: map[uint64][]byte{}}
}

func (q *query) close() {
	for _, f := range q.logs {
		f.Close()
	}
	for _, x := range q.idxs {
		x.f.Close()
	}
}

// offsets returns where key h occurs in v. A segment dropped meanwhile
// (retention) simply has nothing.
func (q *query) offsets(v *view, h uint64) []uint32 {
	if v.idx == "" {
		var offs []uint32
		for _, e := range v.mem {
			if e.h == h {
				offs = append(offs, e.off)
			}
		}
		return offs
	}
	x := q.idxs[v.seq]
	if x == nil {
		var err error
		if x, err = openIdx(v.idx); err != nil {
			return nil
		}
		q.idxs[v.seq] = x
	}
	offs, _ := x.find(h)
	return offs
}

// event reads the line at off in v's log.
func (q *query) event(v *view, off uint32) (Event, bool) {
	f := q.logs[v.seq]
	if f == nil {
		var err error
		if f, err = os.Open(v.log); err != nil {
			return Event{}, false
		}
		q.logs[v.seq] = f
	}
	var line []byte
	buf := make([]byte, 1024)
	pos := int64(off)
	for len(line) < 4<<20 {
		n, err := f.ReadAt(buf, pos)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			line = append(line, buf[:i+1]...)
			var e Event
			if decodeLine(line, &e) != nil {
				return Event{}, false
			}
			return e, true
		}
		line = append(line, buf[:n]...)
		pos += int64(n)
		if err != nil { // io.EOF: a line still being written
			return Event{}, false
		}
	}
	return Event{}, false
}

// lines calls fn with each complete line of a scanned segment and its
// offset; the segment is read once per query (a segment is at most
// maxSegmentSize).
func (q *query) lines(v *view, fn func(line []byte, off uint32)) {
	data, ok := q.data[v.seq]
	if !ok {
		data, _ = os.ReadFile(v.log)
		q.data[v.seq] = data
	}
	for off := 0; off < len(data); {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			return // a line still being written
		}
		fn(data[off:off+i+1], uint32(off))
		off += i + 1
	}
}

// scanEvents returns the events of a scanned segment whose line contains
// needle (lower case, JSON-escaped), compared case-insensitively.
func (q *query) scanEvents(v *view, needle []byte) []hit {
	var hits []hit
	var low []byte
	q.lines(v, func(line []byte, off uint32) {
		low = append(low[:0], line...)
		for i, c := range low {
			if 'A' <= c && c <= 'Z' {
				low[i] = c + 'a' - 'A'
			}
		}
		if !bytes.Contains(low, needle) {
			return
		}
		var e Event
		if decodeLine(line, &e) == nil {
			hits = append(hits, hit{e, v.seq, off})
		}
	})
	return hits
}

// scanQueueIDs returns the events of a scanned segment whose queue ID is
// in ids; the ID is read from its fixed place in the line (appendJSON).
func (q *query) scanQueueIDs(v *view, ids map[string]bool) []hit {
	var hits []hit
	const key = `"queue_id":"`
	q.lines(v, func(line []byte, off uint32) {
		i := bytes.Index(line, []byte(key))
		if i < 0 {
			return
		}
		rest := line[i+len(key):]
		k := bytes.IndexByte(rest, '"')
		if k < 0 || !ids[string(rest[:k])] {
			return
		}
		var e Event
		if decodeLine(line, &e) == nil {
			hits = append(hits, hit{e, v.seq, off})
		}
	})
	return hits
}

// needle is the text every line matching query s contains.
func needle(s string) []byte {
	b := appendString(nil, strings.ToLower(NormalizeMessageID(s)))
	return b[1 : len(b)-1]
}

// hit is an event found in the journal, with where it was found (for
// ordering and de-duplication).
type hit struct {
	e   Event
	seq uint64
	off uint32
}

// queryKeys returns the index keys a query string may match: a queue ID,
// a Message-ID (with or without <>), an address.
func queryKeys(s string) []uint64 {
	var ks []uint64
	if looksLikeQueueID(s) {
		ks = append(ks, hashKey(nsQueue, strings.ToUpper(s)))
	}
	if m := NormalizeMessageID(s); m != "" {
		ks = append(ks, hashKey(nsMessage, m))
	}
	if strings.Contains(s, "@") {
		ks = append(ks, hashKey(nsAddr, normAddr(s)))
	}
	return ks
}

// looksLikeQueueID: 16 characters of the queue's Crockford alphabet.
func looksLikeQueueID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, c := range strings.ToUpper(s) {
		if !strings.ContainsRune("0123456789ABCDEFGHJKMNPQRSTVWXYZ", c) {
			return false
		}
	}
	return true
}

// matches checks a hit against the query (the index holds hashes).
func matches(e *Event, s string) bool {
	if e.QueueID != "" && strings.EqualFold(e.QueueID, s) {
		return true
	}
	if m := NormalizeMessageID(s); m != "" {
		if e.MessageID == m && (e.Event == Accepted || e.QueueID == "") {
			return true
		}
		if e.Event == Delivered && providerToken(e.Text) == m {
			return true
		}
	}
	a := normAddr(s)
	if !strings.Contains(a, "@") {
		return false
	}
	if e.Event == Accepted || e.QueueID == "" {
		if normAddr(e.Sender) == a {
			return true
		}
		for _, r := range e.Recipients {
			if normAddr(r) == a {
				return true
			}
		}
	}
	return e.Recipient != "" && normAddr(e.Recipient) == a
}

// trace finds the messages matching s with an event at or after since,
// and returns each one's whole timeline.
func trace(views []view, s string, since time.Time) Result {
	s = strings.TrimSpace(s)
	q := newQuery(views)
	defer q.close()
	cut := since.UnixNano()
	if since.IsZero() {
		cut = 0
	}
	// Phase 1: events that match the query; their queue IDs.
	latest := map[string]time.Time{} // queue ID → newest matching event
	var orphans []hit                // events without a queue ID (refused at RCPT)
	for i := range views {
		v := &views[i]
		if v.maxT != 0 && v.maxT < cut {
			continue
		}
		var hits []hit
		if v.scan {
			hits = q.scanEvents(v, needle(s))
		} else {
			for _, h := range queryKeys(s) {
				for _, off := range q.offsets(v, h) {
					if e, ok := q.event(v, off); ok {
						hits = append(hits, hit{e, v.seq, off})
					}
				}
			}
		}
		for _, h := range hits {
			e := h.e
			if !matches(&e, s) || e.Time.UnixNano() < cut {
				continue
			}
			if e.QueueID == "" {
				orphans = append(orphans, h)
			} else if t, ok := latest[e.QueueID]; !ok || e.Time.After(t) {
				latest[e.QueueID] = e.Time
			}
		}
	}
	ids := make([]string, 0, len(latest))
	for id := range latest {
		ids = append(ids, id)
	}
	var res Result
	if len(ids) > MaxTrails {
		slices.SortFunc(ids, func(a, b string) int { return latest[b].Compare(latest[a]) })
		ids, res.Truncated = ids[:MaxTrails], true
	}
	// Phase 2: every event of those messages.
	byID := map[string][]hit{}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for i := range views {
		v := &views[i]
		if v.scan {
			for _, h := range q.scanQueueIDs(v, want) {
				byID[h.e.QueueID] = append(byID[h.e.QueueID], h)
			}
			continue
		}
		for _, id := range ids {
			for _, off := range q.offsets(v, hashKey(nsQueue, id)) {
				if e, ok := q.event(v, off); ok && e.QueueID == id {
					byID[id] = append(byID[id], hit{e, v.seq, off})
				}
			}
		}
	}
	for _, id := range ids {
		if len(byID[id]) > 0 {
			res.Trails = append(res.Trails, makeTrail(id, byID[id]))
		}
	}
	orphans = dedupe(orphans)
	for _, o := range orphans {
		res.Trails = append(res.Trails, makeTrail("", []hit{o}))
	}
	slices.SortStableFunc(res.Trails, func(a, b Trail) int { return a.Events[0].Time.Compare(b.Events[0].Time) })
	return res
}

func dedupe(hits []hit) []hit {
	slices.SortStableFunc(hits, func(a, b hit) int {
		if c := cmpUint(a.seq, b.seq); c != 0 {
			return c
		}
		return cmpUint(uint64(a.off), uint64(b.off))
	})
	return slices.CompactFunc(hits, func(a, b hit) bool { return a.seq == b.seq && a.off == b.off })
}

func makeTrail(id string, hits []hit) Trail {
	hits = dedupe(hits)
	// Oldest first; events of one instant keep the order they were written.
	slices.SortStableFunc(hits, func(a, b hit) int { return a.e.Time.Compare(b.e.Time) })
	t := Trail{QueueID: id}
	for _, h := range hits {
		t.Events = append(t.Events, h.e)
		if h.e.Event == Accepted || t.MessageID == "" && t.Sender == "" {
			t.MessageID, t.Sender, t.Subject = h.e.MessageID, h.e.Sender, h.e.Subject
		}
	}
	return t
}

// lookup finds the accepted event of the newest message whose Message-ID
// (or provider ID from its 250 reply) is id.
func lookup(views []view, id string) (Message, bool) {
	id = NormalizeMessageID(id)
	if id == "" {
		return Message{}, false
	}
	q := newQuery(views)
	defer q.close()
	h := hashKey(nsMessage, id)
	for i := len(views) - 1; i >= 0; i-- {
		v := &views[i]
		var hits []hit
		if v.scan {
			hits = q.scanEvents(v, needle(id))
		} else {
			for _, off := range q.offsets(v, h) {
				if e, ok := q.event(v, off); ok {
					hits = append(hits, hit{e, v.seq, off})
				}
			}
		}
		for k := len(hits) - 1; k >= 0; k-- {
			e := hits[k].e
			switch {
			case e.Event == Accepted && e.MessageID == id:
				return messageOf(&e), true
			case e.Event == Delivered && providerToken(e.Text) == id && e.QueueID != "":
				if m, ok := q.accepted(e.QueueID); ok {
					return m, true
				}
			}
		}
	}
	return Message{}, false
}

// accepted finds the accepted event of a queue ID.
func (q *query) accepted(qid string) (Message, bool) {
	h := hashKey(nsQueue, qid)
	for i := len(q.views) - 1; i >= 0; i-- {
		v := &q.views[i]
		if v.scan {
			for _, h := range q.scanQueueIDs(v, map[string]bool{qid: true}) {
				if h.e.Event == Accepted {
					return messageOf(&h.e), true
				}
			}
			continue
		}
		for _, off := range q.offsets(v, h) {
			if e, ok := q.event(v, off); ok && e.Event == Accepted && e.QueueID == qid {
				return messageOf(&e), true
			}
		}
	}
	return Message{}, false
}

func messageOf(e *Event) Message {
	return Message{QueueID: e.QueueID, MessageID: e.MessageID, Sender: e.Sender, Recipients: e.Recipients, Time: e.Time}
}

// views returns the daemon's segments as a query sees them.
func (j *Journal) views() []view {
	j.mu.Lock()
	defer j.mu.Unlock()
	vs := make([]view, 0, len(j.sealed)+len(j.sealing)+1)
	for _, s := range j.sealed {
		v := view{seq: s.seq, log: s.logPath(j.dir), minT: s.minT, maxT: s.maxT}
		if s.idxSize > 0 {
			v.idx = s.idxPath(j.dir)
		} else {
			v.scan = true // its index could not be written
		}
		vs = append(vs, v)
	}
	for _, s := range append(slices.Clone(j.sealing), j.act) {
		vs = append(vs, view{seq: s.seq, log: s.logPath(j.dir), mem: s.idx[:len(s.idx):len(s.idx)], minT: s.minT, maxT: s.maxT})
	}
	slices.SortFunc(vs, func(a, b view) int { return cmpUint(a.seq, b.seq) })
	return vs
}

// Lookup returns the newest accepted message whose Message-ID (with or
// without <>), or the ID its upstream gave in the 250 reply, is messageID.
func (j *Journal) Lookup(messageID string) (Message, bool) {
	return lookup(j.views(), messageID)
}

// Trace finds messages by queue ID, Message-ID or address, with an event
// at or after since (zero: any), and returns their timelines.
func (j *Journal) Trace(query string, since time.Time) Result {
	return trace(j.views(), query, since)
}

// dirViews reads a journal directory no daemon serves, or one a daemon is
// writing: sealed segments through their index, the others by scanning.
func dirViews(dir string) ([]view, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	var vs []view
	for _, s := range segs {
		v := view{seq: s.seq, log: s.logPath(dir), minT: s.minT, maxT: s.maxT}
		if s.idxSize > 0 {
			v.idx = s.idxPath(dir)
		} else {
			v.scan = true
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// TraceDir traces in the journal directory dir (state_dir/journal),
// whether or not a daemon is writing it.
func TraceDir(dir, query string, since time.Time) (Result, error) {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Result{}, nil
		}
		return Result{}, err
	}
	vs, err := dirViews(filepath.Clean(dir))
	if err != nil {
		return Result{}, err
	}
	return trace(vs, query, since), nil
}

// LookupDir is Lookup on a directory (offline).
func LookupDir(dir, messageID string) (Message, bool, error) {
	vs, err := dirViews(dir)
	if err != nil {
		return Message{}, false, err
	}
	m, ok := lookup(vs, messageID)
	return m, ok, nil
}
