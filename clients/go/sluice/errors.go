package sluice

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a refusal from the store: the gRPC code, the ErrorInfo reason (an ErrorReason
// name such as WRONG_EXPECTED_REVISION) and metadata, the field a BadRequest names and
// the limit a QuotaFailure names.
type Error struct {
	Code     codes.Code
	Reason   string
	Message  string
	Metadata map[string]string
	Field    string
	Limit    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("sluice: %s: %s (%s)", e.Code, e.Message, e.Reason)
}

// fromStatus turns a gRPC error into an *Error from its status details.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	out := &Error{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}}
	for _, d := range st.Details() {
		switch v := d.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = v.Reason
			for k, val := range v.Metadata {
				out.Metadata[k] = val
			}
		case *errdetails.BadRequest:
			if len(v.FieldViolations) > 0 {
				out.Field = v.FieldViolations[0].Field
			}
		case *errdetails.QuotaFailure:
			if len(v.Violations) > 0 {
				out.Limit = v.Violations[0].Subject
			}
		}
	}
	return out
}
