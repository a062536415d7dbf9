// Package calendar is the demo MCP server of the gateway examples: three
// calendar tools built with the go-sdk, and the Mandate schema and
// relationships that go with them.
package calendar

import (
	"context"
	"fmt"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	pb "github.com/mandate-authz/mandate/proto/mandate/v1"
)

// Schema lets people own calendars and agents read (never write) what
// their principals can.
const Schema = `definition user {}

definition agent {
	relation acts_for: user | agent
}

definition calendar {
	relation owner: user
	relation reader: user | agent:*
	permission read = owner + reader
	permission write = owner
}

definition mcp_tool {
	relation user: user | agent:*
	permission use = user
}
`

// Relationships: alice owns calendar:alice, agent:helper acts for her,
// agent:sub for agent:helper; agents may use the read tools, only people
// add_event.
var Relationships = []string{
	"calendar:alice#owner@user:alice",
	"calendar:alice#reader@agent:*",
	"calendar:bob#owner@user:bob",
	"calendar:bob#reader@agent:*",
	"mcp_tool:read_calendar#user@user:alice",
	"mcp_tool:read_calendar#user@agent:*",
	"mcp_tool:summarize_calendar#user@user:alice",
	"mcp_tool:summarize_calendar#user@agent:*",
	"mcp_tool:add_event#user@user:alice",
	"mcp_tool:plan_week#user@user:alice",
	"mcp_tool:plan_week#user@agent:*",
	"agent:helper#acts_for@user:alice",
	"agent:sub#acts_for@agent:helper",
}

type calendarArgs struct {
	CalendarID string `json:"calendar_id" jsonschema:"the calendar, such as alice"`
}

type eventArgs struct {
	CalendarID string `json:"calendar_id" jsonschema:"the calendar, such as alice"`
	Title      string `json:"title" jsonschema:"the event's title"`
}

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

// NewServer returns the MCP server with its three tools, a prompt, and a
// resource per calendar.
func NewServer() *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "calendar", Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: "read_calendar", Description: "Lists a calendar's events."},
		func(_ context.Context, _ *mcp.CallToolRequest, in calendarArgs) (*mcp.CallToolResult, any, error) {
			return text("events of " + in.CalendarID + ": standup 09:00"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "add_event", Description: "Adds an event to a calendar."},
		func(_ context.Context, _ *mcp.CallToolRequest, in eventArgs) (*mcp.CallToolResult, any, error) {
			return text("added " + in.Title + " to " + in.CalendarID), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: "summarize_calendar", Description: "Summarizes a calendar, reporting progress."},
		func(ctx context.Context, req *mcp.CallToolRequest, in calendarArgs) (*mcp.CallToolResult, any, error) {
			if tok := req.Params.GetProgressToken(); tok != nil {
				for i := 1; i <= 3; i++ {
					req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i), Total: 3, Message: fmt.Sprintf("step %d", i)})
				}
			}
			return text("summary of " + in.CalendarID + ": one meeting"), nil, nil
		})
	s.AddPrompt(&mcp.Prompt{Name: "plan_week", Description: "Plans the week from a calendar.", Arguments: []*mcp.PromptArgument{{Name: "calendar_id", Required: true}}},
		func(_ context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return &mcp.GetPromptResult{Messages: []*mcp.PromptMessage{{Role: "user", Content: &mcp.TextContent{Text: "Plan the week of " + req.Params.Arguments["calendar_id"]}}}}, nil
		})
	for _, owner := range []string{"alice", "bob"} {
		uri := "calendar://" + owner + "/events"
		s.AddResource(&mcp.Resource{URI: uri, Name: owner + "-events", MIMEType: "text/plain"},
			func(_ context.Context, _ *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
				return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, MIMEType: "text/plain", Text: "events of " + owner}}}, nil
			})
	}
	return s
}

// Seed writes Schema and Relationships to Mandate.
func Seed(ctx context.Context, schema pb.SchemaServiceClient, rels pb.RelationshipServiceClient) error {
	if _, err := schema.WriteSchema(ctx, &pb.WriteSchemaRequest{Schema: Schema}); err != nil {
		return fmt.Errorf("writing the schema: %w", err)
	}
	var ups []*pb.RelationshipUpdate
	for _, r := range Relationships {
		res, rest, _ := strings.Cut(r, "#")
		relation, subject, _ := strings.Cut(rest, "@")
		rt, rid, _ := strings.Cut(res, ":")
		st, sid, _ := strings.Cut(subject, ":")
		ups = append(ups, &pb.RelationshipUpdate{Operation: pb.RelationshipUpdate_OPERATION_TOUCH, Relationship: &pb.Relationship{
			Resource: &pb.ObjectReference{ObjectType: rt, ObjectId: rid},
			Relation: relation,
			Subject:  &pb.SubjectReference{Object: &pb.ObjectReference{ObjectType: st, ObjectId: sid}},
		}})
	}
	if _, err := rels.WriteRelationships(ctx, &pb.WriteRelationshipsRequest{Updates: ups}); err != nil {
		return fmt.Errorf("writing the relationships: %w", err)
	}
	return nil
}
