package audit

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// OCSFVersion is the OCSF schema version exported events follow.
const OCSFVersion = "1.5.0"

// OCSF class and category of every exported event: API Activity (6003) in
// Application Activity (6).
const (
	ocsfCategoryUID = 6
	ocsfClassUID    = 6003
)

// OCSF activity_id values of API Activity.
const (
	ocsfCreate = 1
	ocsfRead   = 2
	ocsfUpdate = 3
	ocsfDelete = 4
	ocsfOther  = 99
)

// OCSFEvent is an event as an OCSF API Activity (class_uid 6003) event.
//
// actor.user is the principal the decision ties to (the person at the end of
// the agent's chain, or the person who is the subject) and actor.app_name
// the calling service (its preshared key's name); actor.authorizations holds
// the decision. OCSF has no released attribute for the agent acting for the
// user and its delegation chain (actor.invoked_by is deprecated since 1.2.0
// in favour of app_name/app_uid, which name the calling application, and an
// ai_agent object is still a proposal), so they go, as OCSF prescribes for
// source data without an attribute, in unmapped: unmapped.ai_agent (uid and
// name, the shape of the proposed object) and unmapped.mandate (the chain
// and everything else Mandate records, including the record's hash chain
// position).
type OCSFEvent struct {
	ActivityID   int    `json:"activity_id"`
	ActivityName string `json:"activity_name"`
	CategoryUID  int    `json:"category_uid"`
	CategoryName string `json:"category_name"`
	ClassUID     int    `json:"class_uid"`
	ClassName    string `json:"class_name"`
	TypeUID      int    `json:"type_uid"`
	TypeName     string `json:"type_name"`
	// Time is milliseconds since the Unix epoch.
	Time         int64          `json:"time"`
	SeverityID   int            `json:"severity_id"`
	Severity     string         `json:"severity"`
	StatusID     int            `json:"status_id"`
	Status       string         `json:"status"`
	StatusCode   string         `json:"status_code,omitempty"`
	StatusDetail string         `json:"status_detail,omitempty"`
	Message      string         `json:"message"`
	Metadata     OCSFMetadata   `json:"metadata"`
	Actor        OCSFActor      `json:"actor"`
	API          OCSFAPI        `json:"api"`
	Resources    []OCSFResource `json:"resources,omitempty"`
	SrcEndpoint  OCSFEndpoint   `json:"src_endpoint"`
	Unmapped     map[string]any `json:"unmapped,omitempty"`
}

// OCSFMetadata is OCSF's metadata object.
type OCSFMetadata struct {
	Version string      `json:"version"`
	Product OCSFProduct `json:"product"`
	// UID is the record's hash: unique, and what the trail's chain links.
	UID string `json:"uid"`
	// CorrelationUID is the request ID shared by a request's events (all
	// the items of one CheckBulk).
	CorrelationUID string `json:"correlation_uid,omitempty"`
	LogName        string `json:"log_name"`
}

// OCSFProduct is OCSF's product object.
type OCSFProduct struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
}

// OCSFActor is OCSF's actor object.
type OCSFActor struct {
	User           *OCSFUser           `json:"user,omitempty"`
	AppName        string              `json:"app_name,omitempty"`
	Authorizations []OCSFAuthorization `json:"authorizations,omitempty"`
}

// OCSFUser is OCSF's user object.
type OCSFUser struct {
	UID    string `json:"uid"`
	Name   string `json:"name"`
	Type   string `json:"type"`
	TypeID int    `json:"type_id"`
}

// OCSFAuthorization is OCSF's authorization object.
type OCSFAuthorization struct {
	Decision string `json:"decision"`
}

// OCSFAPI is OCSF's api object.
type OCSFAPI struct {
	Operation string          `json:"operation"`
	Service   OCSFService     `json:"service"`
	Request   *OCSFAPIRequest `json:"request,omitempty"`
}

// OCSFService is OCSF's service object.
type OCSFService struct {
	Name string `json:"name"`
}

// OCSFAPIRequest is OCSF's request object.
type OCSFAPIRequest struct {
	UID string `json:"uid"`
}

// OCSFResource is OCSF's resource_details object.
type OCSFResource struct {
	UID  string `json:"uid"`
	Name string `json:"name,omitempty"`
	Type string `json:"type"`
}

// OCSFEndpoint is OCSF's network_endpoint object.
type OCSFEndpoint struct {
	IP   string `json:"ip,omitempty"`
	Port int    `json:"port,omitempty"`
	Name string `json:"name,omitempty"`
}

// methods maps operations to their gRPC service and method.
var methods = map[Operation][2]string{
	OpCheck:               {"mandate.v1.PermissionService", "Check"},
	OpCheckBulk:           {"mandate.v1.PermissionService", "CheckBulk"},
	OpLookupResources:     {"mandate.v1.PermissionService", "LookupResources"},
	OpLookupSubjects:      {"mandate.v1.PermissionService", "LookupSubjects"},
	OpExpand:              {"mandate.v1.PermissionService", "Expand"},
	OpWriteRelationships:  {"mandate.v1.RelationshipService", "WriteRelationships"},
	OpDeleteRelationships: {"mandate.v1.RelationshipService", "DeleteRelationships"},
	OpImportRelationships: {"mandate.v1.RelationshipService", "ImportRelationships"},
	OpReadRelationships:   {"mandate.v1.RelationshipService", "ReadRelationships"},
	OpExportRelationships: {"mandate.v1.RelationshipService", "ExportRelationships"},
	OpWatch:               {"mandate.v1.RelationshipService", "Watch"},
	OpWriteSchema:         {"mandate.v1.SchemaService", "WriteSchema"},
	OpReadSchema:          {"mandate.v1.SchemaService", "ReadSchema"},
	OpValidateSchema:      {"mandate.v1.SchemaService", "ValidateSchema"},
	OpAuditQuery:          {"mandate.v1.AuditService", "Query"},
	OpEventsDropped:       {"mandate.audit", "Drop"},
}

func activityOf(ev *Event) (int, string) {
	switch ev.Operation {
	case OpWriteRelationships:
		switch ev.Update {
		case "create":
			return ocsfCreate, "Create"
		case "delete":
			return ocsfDelete, "Delete"
		}
		return ocsfUpdate, "Update"
	case OpImportRelationships:
		return ocsfCreate, "Create"
	case OpDeleteRelationships:
		return ocsfDelete, "Delete"
	case OpWriteSchema:
		return ocsfUpdate, "Update"
	case OpEventsDropped:
		return ocsfOther, "Other"
	}
	return ocsfRead, "Read"
}

// ToOCSF maps an event to an OCSF API Activity event.
func ToOCSF(ev *Event) OCSFEvent {
	actID, actName := activityOf(ev)
	out := OCSFEvent{
		ActivityID: actID, ActivityName: actName,
		CategoryUID: ocsfCategoryUID, CategoryName: "Application Activity",
		ClassUID: ocsfClassUID, ClassName: "API Activity",
		TypeUID: ocsfClassUID*100 + actID, TypeName: "API Activity: " + actName,
		Time:       ev.Time.UnixMilli(),
		SeverityID: 1, Severity: "Informational",
		Message: message(ev),
		Metadata: OCSFMetadata{
			Version:        OCSFVersion,
			Product:        OCSFProduct{Name: "Mandate", VendorName: "Mandate"},
			UID:            ev.Hash,
			CorrelationUID: ev.RequestID,
			LogName:        "audit",
		},
		Actor: OCSFActor{AppName: ev.Caller},
	}
	switch ev.Decision {
	case Allowed, OK:
		out.StatusID, out.Status = 1, "Success"
	case Denied, Error:
		out.StatusID, out.Status = 2, "Failure"
	default:
		out.StatusID, out.Status = 99, "Other"
	}
	out.StatusCode = ev.Code
	switch {
	case ev.Error != "":
		out.StatusDetail = ev.Error
	case ev.Reason != "":
		out.StatusDetail = ev.Reason
	case ev.Decision == Conditional:
		out.StatusDetail = "conditional: missing " + strings.Join(ev.Missing, ", ")
	}
	if ev.Operation == OpEventsDropped {
		out.SeverityID, out.Severity = 4, "High"
	}
	if ev.Principal != "" {
		out.Actor.User = ocsfUser(ev.Principal)
	}
	if isDecision(ev.Decision) {
		out.Actor.Authorizations = []OCSFAuthorization{{Decision: string(ev.Decision)}}
	}
	m := methods[ev.Operation]
	out.API = OCSFAPI{Operation: m[1], Service: OCSFService{Name: m[0]}}
	if out.API.Operation == "" {
		out.API.Operation = string(ev.Operation)
	}
	if ev.RequestID != "" {
		out.API.Request = &OCSFAPIRequest{UID: ev.RequestID}
	}
	if ev.Resource != "" {
		typ, id, _ := strings.Cut(ev.Resource, ":")
		out.Resources = []OCSFResource{{UID: ev.Resource, Name: id, Type: typ}}
	}
	out.SrcEndpoint = endpoint(ev.Source, ev.Transport)
	out.Unmapped = unmapped(ev)
	return out
}

func isDecision(d Decision) bool { return d == Allowed || d == Denied || d == Conditional }

// ocsfUser describes a principal; type "User" (type_id 1) as OCSF's user
// types go, since a principal is a person.
func ocsfUser(obj string) *OCSFUser {
	_, id, _ := strings.Cut(obj, ":")
	return &OCSFUser{UID: obj, Name: id, Type: "User", TypeID: 1}
}

func endpoint(source, transport string) OCSFEndpoint {
	if host, port, err := net.SplitHostPort(source); err == nil {
		p, _ := strconv.Atoi(port)
		return OCSFEndpoint{IP: host, Port: p}
	}
	if ip := net.ParseIP(source); ip != nil {
		return OCSFEndpoint{IP: source}
	}
	if source != "" {
		return OCSFEndpoint{Name: source}
	}
	if transport == "" {
		transport = "unknown"
	}
	return OCSFEndpoint{Name: transport}
}

func unmapped(ev *Event) map[string]any {
	m := map[string]any{
		"seq":       ev.Seq,
		"operation": string(ev.Operation),
		"hash":      ev.Hash,
		"prev_hash": ev.PrevHash,
	}
	set := func(k string, v any, ok bool) {
		if ok {
			m[k] = v
		}
	}
	set("chain_id", ev.ChainID, ev.ChainID != "")
	set("transport", ev.Transport, ev.Transport != "")
	set("subject", ev.Subject, ev.Subject != "")
	set("subject_kind", string(ev.SubjectKind), ev.SubjectKind != "")
	set("permission", ev.Permission, ev.Permission != "")
	set("on_behalf_of", ev.OnBehalfOf, ev.OnBehalfOf != "")
	set("principal", ev.Principal, ev.Principal != "")
	set("token_id", ev.TokenID, ev.TokenID != "")
	set("approval_id", ev.ApprovalID, ev.ApprovalID != "")
	set("evaluation_id", ev.EvaluationID, ev.EvaluationID != "")
	set("rule", ev.Rule, ev.Rule != "")
	set("decider", ev.Decider, ev.Decider != "")
	set("chain", ev.Chain, len(ev.Chain) > 0)
	set("context", ev.Context, len(ev.Context) > 0)
	set("decision", string(ev.Decision), ev.Decision != "")
	set("reason", ev.Reason, ev.Reason != "")
	set("missing", ev.Missing, len(ev.Missing) > 0)
	set("resolvable_by_approval", true, ev.ResolvableByApproval)
	set("revision", ev.Revision, ev.Revision != 0)
	set("update", ev.Update, ev.Update != "")
	set("caveat", ev.Caveat, ev.Caveat != "")
	set("expires_at", ev.ExpiresAt, ev.ExpiresAt != nil)
	set("count", ev.Count, ev.Count != 0)
	set("detail", ev.Detail, ev.Detail != "")
	out := map[string]any{"mandate": m}
	if ev.SubjectKind == Agent {
		_, id, _ := strings.Cut(ev.Subject, ":")
		out["ai_agent"] = map[string]any{"uid": ev.Subject, "name": id}
	}
	return out
}

// message is a one-line summary for humans and SIEM views.
func message(ev *Event) string {
	var b strings.Builder
	if ev.Update != "" {
		// A relationship write: the caller changed a fact about a subject.
		fmt.Fprintf(&b, "%s %s %s#%s@%s: %s", ev.Caller, ev.Update, ev.Resource, ev.Permission, ev.Subject, ev.Decision)
		return b.String()
	}
	who := ev.Subject
	if who == "" {
		who = ev.Caller
	}
	b.WriteString(who)
	if len(ev.Chain) > 1 {
		names := make([]string, len(ev.Chain))
		for i, l := range ev.Chain {
			names[i] = l.Subject
		}
		fmt.Fprintf(&b, " (chain %s)", strings.Join(names, " -> "))
	}
	b.WriteString(" " + string(ev.Operation))
	if ev.Permission != "" {
		b.WriteString(" " + ev.Permission)
	}
	if ev.Resource != "" {
		b.WriteString(" on " + ev.Resource)
	}
	b.WriteString(": " + string(ev.Decision))
	if ev.Reason != "" {
		b.WriteString(" (" + ev.Reason + ")")
	}
	return b.String()
}
