// Package saslogin is the server side of AUTH LOGIN, which go-sasl no longer
// ships (libs.md §2), for the relay and for the test upstreams.
package saslogin

import "github.com/emersion/go-sasl"

// Server answers one AUTH LOGIN, with or without the username as an initial
// response.
type Server struct {
	// Prompts are the two challenges; zero means "Username:", "Password:".
	Prompts [2]string
	// User, when set, vets the username before the password is asked for;
	// its error is the reply.
	User func(user string) error
	// Auth checks the credentials; its error is the reply.
	Auth func(user, pass string) error

	step int
	user string
}

var defaultPrompts = [2]string{"Username:", "Password:"}

func (l *Server) Next(resp []byte) ([]byte, bool, error) {
	p := l.Prompts
	if p == [2]string{} {
		p = defaultPrompts
	}
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte(p[0]), false, nil
		}
		fallthrough
	case 1:
		if l.User != nil {
			if err := l.User(string(resp)); err != nil {
				return nil, false, err
			}
		}
		l.user, l.step = string(resp), 2
		return []byte(p[1]), false, nil
	case 2:
		l.step = 3
		return nil, true, l.Auth(l.user, string(resp))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
