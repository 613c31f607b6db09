package testsmtp

import (
	"io"

	"github.com/emersion/go-smtp"
)

// Transact is the client side for tests of an SMTP server: MAIL, one RCPT
// per recipient and DATA in c's open session; it returns the text of the
// reply to the final dot (its error when that reply is not 2xx).
func Transact(c *smtp.Client, from string, to []string, data string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return "", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(w, data); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return resp.StatusText, nil
}
