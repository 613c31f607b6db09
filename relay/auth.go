package relay

import (
	"context"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/saslogin"
)

// AuthMechanisms offers PLAIN and LOGIN only where credentials are safe:
// after STARTTLS, on implicit TLS, or on a tls: none listener whose
// operator allowed cleartext passwords (allow_insecure_auth, warned at
// start).
func (s *session) AuthMechanisms() []string {
	if !s.authOffered() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) authOffered() bool {
	return s.tls || (s.l.cfg.TLS == config.TLSNone && s.l.cfg.AllowInsecureAuth)
}

// Auth answers AUTH. go-smtp sends an *smtp.SMTPError from here or from the
// SASL server as is; anything else would become a temporary 454 carrying
// internal text, so only named replies are returned.
func (s *session) Auth(mech string) (sasl.Server, error) {
	// RFC 4954 §4: no AUTH inside a mail transaction (it would change
	// whose policy applies to a sender already accepted).
	s.mu.Lock()
	inTx := s.tx.pol != nil
	s.mu.Unlock()
	if inTx {
		return nil, ReplyAuthInTransaction
	}
	if !s.authOffered() {
		if s.l.cfg.TLS == config.TLSNone {
			return nil, ReplyAuthNotOffered
		}
		return nil, ReplyStartTLSFirst
	}
	switch mech {
	case sasl.Plain:
		return namedErrors{sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return s.authenticate("", "")
			}
			return s.authenticate(username, password)
		})}, nil
	case sasl.Login:
		return &saslogin.Server{User: refuseNUL, Auth: s.authenticate}, nil
	}
	return nil, ReplyAuthMechanism
}

// authenticate checks one credential pair, slowing and then refusing an
// address with many recent failures (DESIGN §7 "Auth failures"). The
// attempt holds a failure slot while its password is checked, so parallel
// connections get no more guesses than one.
func (s *session) authenticate(username, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	attempt, delay, blocked := s.st.policy.BeginAuth(ctx, s.ip)
	if blocked {
		s.closeAfterReply()
		return ReplyAuthBlocked
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	u, ok := s.st.users.check(username, password)
	attempt.Done(ctx, ok)
	if !ok {
		mAuthFail.Inc()
		// Never log the password; the name helps operators find a broken app,
		// the delay that the failures before this one made it wait.
		attrs := []any{"user", username}
		if delay > 0 {
			attrs = append(attrs, "delayed", delay)
		}
		s.log.Warn("auth_failed", attrs...)
		return ReplyAuthFailed
	}
	mAuthOK.Inc()
	s.user = u.Name
	s.policyName = u.Policy
	s.log = s.log.With("user", u.Name)
	s.log.Debug("authenticated")
	return nil
}

// closeAfterReply ends the connection right after the current reply.
func (s *session) closeAfterReply() {
	if tc := trackedOf(s.conn.Conn()); tc != nil {
		tc.closeAfter.Store(true)
	}
}

// refuseNUL refuses an AUTH LOGIN username with a NUL byte in it.
func refuseNUL(user string) error {
	if strings.IndexByte(user, 0) >= 0 {
		return ReplyAuthMalformed
	}
	return nil
}

// namedErrors turns go-sasl's own errors (a malformed PLAIN response) into a
// named reply; go-smtp would send them as a temporary 454 with their text.
type namedErrors struct{ sasl.Server }

func (n namedErrors) Next(resp []byte) ([]byte, bool, error) {
	c, done, err := n.Server.Next(resp)
	if _, ok := err.(*smtp.SMTPError); err != nil && !ok {
		err = ReplyAuthMalformed
	}
	return c, done, err
}
