package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// The states of dataReader: it elides leading dots and detects the
// End-of-Data (<CR><LF>.<CR><LF>) line.
const (
	stateBeginLine = iota // beginning of line; initial state; must be zero
	stateDot              // read . at beginning of line
	stateDotCR            // read .\r at beginning of line
	stateCR               // read \r (possibly at end of line)
	stateData             // reading data in middle of line
	stateEOF              // reached .\r\n end marker line
)

func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}

	// The state machine is net/textproto's, with one modification: CRLF is
	// not rewritten to LF.
	//
	// sluice: it runs over the bytes bufio already holds (Peek, then
	// Discard what was consumed), and copies the middle of a line up to
	// its next CR at once; it read byte by byte with ReadByte (5% of the
	// relay's CPU per message, issue 14). Each byte goes through the same
	// transitions as before (data_test.go compares the two by fuzzing).
	for n < len(b) && r.state != stateEOF {
		if r.r.Buffered() == 0 {
			if _, err = r.r.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				break
			}
		}
		buf, _ := r.r.Peek(r.r.Buffered())
		i := 0
		for i < len(buf) && n < len(b) && r.state != stateEOF {
			c := buf[i]
			switch r.state {
			case stateBeginLine:
				if c == '.' {
					r.state = stateDot
					i++
					continue
				}
				if c == '\r' {
					r.state = stateCR
				} else {
					r.state = stateData
				}
			case stateDot:
				if c == '\r' {
					r.state = stateDotCR
					i++
					continue
				}
				r.state = stateData
			case stateDotCR:
				if c == '\n' {
					r.state = stateEOF
					i++
					continue
				}
				// sluice: the CR after a leading dot was held back; pass it
				// on (the caller refuses a bare CR) and read c again.
				b[n] = '\r'
				n++
				r.state = stateCR
				continue
			case stateCR:
				if c == '\n' {
					r.state = stateBeginLine
				} else {
					r.state = stateData
				}
			case stateData:
				// The rest of the line up to its CR, at once: nothing
				// else in it changes the state.
				end := len(buf)
				if room := i + len(b) - n; room < end {
					end = room
				}
				k := bytes.IndexByte(buf[i:end], '\r')
				if k < 0 {
					n += copy(b[n:], buf[i:end])
					i = end
					continue
				}
				n += copy(b[n:], buf[i:i+k+1])
				i += k + 1
				r.state = stateCR
				continue
			}
			b[n] = c
			n++
			i++
		}
		r.r.Discard(i)
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}
